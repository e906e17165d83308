// `run --rerun-failed`: which checks of an earlier run to run again (its failed and broken ones),
// as vitest test-name patterns per suite file, and which results of the new run count.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError } from './errors.ts';
import type { CheckResult, RunSummary } from './report.ts';
import { RUN_SUMMARY_SCHEMA } from './summary-schema.ts';

/** Checks not tied to one declared check: the suite broke as a whole and runs again as a whole. */
const WHOLE_SUITE = new Set(['(suite setup)', '(suite file)', '(unhandled error)']);

export interface RerunSelection {
  /** The run being continued. */
  of: string;
  /** The failed and broken checks of that run. */
  checks: CheckResult[];
  /** Suites to run, in the earlier run's order. */
  suites: string[];
  /** Per suite: the vitest test-name pattern (undefined: every check of the suite). */
  patterns: Map<string, RegExp | undefined>;
  /** Suites the earlier run ran. */
  ran: string[];
  /** Nodes the selected checks ran on. */
  nodes: string[];
  /** Whether a result of the new run is one of the selected checks. */
  selects(suite: string, node: string, name: string): boolean;
}

/** vitest's full name of a check: its describe block (the node) and its title. */
export function fullName(node: string, name: string): string {
  return node === '-' ? name : `${node} ${name}`;
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

export function rerunSelection(prev: RunSummary): RerunSelection {
  const checks = prev.checks.filter((c) => c.state === 'failed' || c.state === 'broken');
  const suites = prev.suites.map((s) => s.name).filter((s) => checks.some((c) => c.suite === s));
  const patterns = new Map<string, RegExp | undefined>();
  const whole = new Set<string>();
  for (const s of suites) {
    const mine = checks.filter((c) => c.suite === s);
    if (mine.some((c) => c.node === '-' && WHOLE_SUITE.has(c.name))) {
      whole.add(s);
      patterns.set(s, undefined);
    } else patterns.set(s, new RegExp(`^(?:${mine.map((c) => escape(fullName(c.node, c.name))).join('|')})$`));
  }
  const keys = new Set(checks.map((c) => `${c.suite}\0${c.node}\0${c.name}`));
  return {
    of: prev.runId,
    checks,
    suites,
    patterns,
    ran: prev.suites.map((s) => s.name),
    nodes: [...new Set(checks.map((c) => c.node).filter((n) => n !== '-'))],
    selects: (suite, node, name) => whole.has(suite) || keys.has(`${suite}\0${node}\0${name}`),
  };
}

/**
 * The summary.json an argument names: a path to a summary.json (or its run directory), a run id
 * under `reportsDir`, or (none) the latest run. Bad input is a usage error naming what was tried.
 */
export function loadRunSummary(arg: string | undefined, reportsDir: string, flag: string): { summary: RunSummary; path: string } {
  const candidates = arg === undefined ? [join(reportsDir, 'latest', 'summary.json')] : [arg, join(arg, 'summary.json'), join(reportsDir, arg, 'summary.json')];
  const path = candidates.find((p) => existsSync(p) && statSync(p).isFile());
  if (!path) {
    throw new ConfigError('command line', [{ path: flag, message: `no summary.json at ${candidates.join(' or ')}${arg === undefined ? ' (no run yet?)' : ''}` }]);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new ConfigError(path, [{ path: '', message: `not JSON: ${(e as Error).message}` }]);
  }
  const r = RUN_SUMMARY_SCHEMA.safeParse(raw);
  if (!r.success) throw new ConfigError(path, r.error.issues.slice(0, 5).map((i) => ({ path: i.path.join('.'), message: `${i.message} (not a gvisor-e2e summary.json of this schema version)` })));
  return { summary: r.data, path };
}
