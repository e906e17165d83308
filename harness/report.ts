import { mkdirSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import Table from 'cli-table3';
import type { Reporter, TestModule } from 'vitest/node';
import { ExitCode } from './errors.ts';
import { redact } from './redact.ts';
import type { RunDir } from './rundir.ts';
import type { z } from 'zod';
import { RUN_SUMMARY_SCHEMA, SUMMARY_SCHEMA_VERSION } from './summary-schema.ts';

// A run's results, per suite and per node, in the four states CI needs: passed, failed (the node
// is wrong), broken (the harness or infrastructure could not tell), skipped. Written as
// summary.json for machines and summary.md for people; the terminal prints the same table.

export type State = RunSummary['state'];
/** summary.json: its types come from the schema that ships as reports/summary.schema.json. */
export type RunSummary = z.output<typeof RUN_SUMMARY_SCHEMA>;
export type CheckResult = RunSummary['checks'][number];
export type SuiteSummary = RunSummary['suites'][number];
export type PodSummary = RunSummary['pods']['privileged'][number];

/** Must match suite.ts POD_ANNOTATION (not imported: suite.ts pulls in vitest's test API). */
const POD_ANNOTATION = 'gvisor-e2e.pod';
/** Must match suite.ts WARNING_ANNOTATION. */
const WARNING_ANNOTATION = 'gvisor-e2e.warning';

/** Errors that mean "the node answered wrong"; anything else means we could not ask. */
const PRODUCT_ERRORS = new Set(['AssertionError', 'SandboxStartError', 'CriError', 'UnschedulableError']);

export function classify(errors: readonly { name?: string; message?: string }[] | undefined): State {
  if (!errors?.length) return 'failed';
  return errors.every((e) => PRODUCT_ERRORS.has(e.name ?? '')) ? 'failed' : 'broken';
}

const zero = (): Record<State, number> => ({ passed: 0, failed: 0, broken: 0, skipped: 0 });

/** Suite name from its file: suites/<name>/<name>.suite.ts. */
export function suiteOf(moduleId: string): string {
  return basename(dirname(moduleId));
}

function worst(states: State[]): State {
  for (const s of ['broken', 'failed', 'passed'] as const) if (states.includes(s)) return s;
  return 'skipped';
}

/**
 * What went wrong outside any check, each becoming a broken check of its own so a run that
 * checked nothing cannot pass: vitest's unhandled errors, and selected suites whose file is missing.
 */
export interface RunProblems {
  unhandledErrors?: readonly { name?: string; message?: string }[];
  missingSuites?: string[];
  /** A rerun: only the checks it selected count (vitest reports the others as skipped); one it selected and did not find is broken. */
  rerun?: { of: string; checks: readonly { suite: string; node: string; name: string }[]; selects: (suite: string, node: string, name: string) => boolean };
}

export function summarize(runId: string, cluster: string, startedAt: Date, modules: readonly TestModule[], suiteNames: string[], problems: RunProblems = {}): RunSummary {
  const checks: CheckResult[] = [];
  const pods: PodSummary[] = [];
  const suites = new Map<string, SuiteSummary>();
  for (const name of suiteNames) suites.set(name, { name, state: 'skipped', durationMs: 0, counts: zero(), nodes: {} });
  for (const m of modules) {
    const suite = suiteOf(m.moduleId);
    const s = suites.get(suite) ?? { name: suite, state: 'skipped', durationMs: 0, counts: zero(), nodes: {} };
    suites.set(suite, s);
    s.durationMs += m.diagnostic().duration;
    const moduleErrors = m.errors();
    if (moduleErrors.length > 0) {
      // The suite could not even start (a node unreachable while collecting, a bad plan).
      checks.push({ suite, node: '-', name: '(suite setup)', state: 'broken', durationMs: 0, message: redact(moduleErrors.map((e) => e.message).join('; ')), notes: [], warnings: [], attempts: 1 });
    }
    for (const t of m.children.allTests()) {
      const r = t.result();
      const node = t.parent.type === 'suite' ? t.parent.name : '-';
      if (problems.rerun && !problems.rerun.selects(suite, node, t.name)) continue;
      const state: State = r.state === 'passed' ? 'passed' : r.state === 'failed' ? classify(r.errors) : 'skipped';
      const message = r.state === 'failed' ? redact((r.errors ?? []).map((e) => e.message).join('; ')) : r.state === 'skipped' && r.note ? redact(r.note) : undefined;
      const d = t.diagnostic();
      const annotations = t.annotations();
      for (const a of annotations.filter((x) => x.type === POD_ANNOTATION)) {
        try {
          pods.push({ suite, ...(JSON.parse(a.message) as Omit<PodSummary, 'suite'>) });
        } catch {
          /* not ours */
        }
      }
      const notes = annotations.filter((a) => a.type !== POD_ANNOTATION && a.type !== WARNING_ANNOTATION).map((a) => redact(a.message));
      const warnings = annotations.filter((a) => a.type === WARNING_ANNOTATION).map((a) => redact(a.message));
      checks.push({ suite, node, name: t.name, state, durationMs: d?.duration ?? 0, message, notes, warnings, attempts: (d?.retryCount ?? 0) + 1 });
    }
  }
  for (const c of problems.rerun?.checks ?? []) {
    if (c.name.startsWith('(') || checks.some((x) => x.suite === c.suite && x.node === c.node && x.name === c.name)) continue;
    checks.push({ suite: c.suite, node: c.node, name: c.name, state: 'broken', durationMs: 0, message: `run ${problems.rerun!.of} had this check; this run did not declare it (a node or pool gone, or its title changed with the config)`, notes: [], warnings: [], attempts: 1 });
  }
  for (const suite of problems.missingSuites ?? []) {
    checks.push({ suite, node: '-', name: '(suite file)', state: 'broken', durationMs: 0, message: `the suite file suites/${suite}/${suite}.suite.ts does not exist`, notes: [], warnings: [], attempts: 1 });
  }
  // A suite file that loaded but declared nothing has not checked anything either.
  for (const m of modules) {
    const suite = suiteOf(m.moduleId);
    if (m.errors().length === 0 && [...m.children.allTests()].length === 0) {
      checks.push({ suite, node: '-', name: '(suite file)', state: 'broken', durationMs: 0, message: `${suite} declared no checks`, notes: [], warnings: [], attempts: 1 });
    }
  }
  for (const e of problems.unhandledErrors ?? []) {
    // Not tied to a check; vitest reports it after the run (a promise rejected outside a check, a worker that died).
    const suite = suiteNames[0] ?? '(run)';
    checks.push({ suite, node: '-', name: '(unhandled error)', state: 'broken', durationMs: 0, message: redact(`${e.name ?? 'Error'}: ${e.message ?? String(e)}`), notes: [], warnings: [], attempts: 1 });
  }
  for (const c of checks) {
    const s = suites.get(c.suite) ?? { name: c.suite, state: 'skipped' as State, durationMs: 0, counts: zero(), nodes: {} };
    suites.set(c.suite, s);
    s.counts[c.state]++;
    (s.nodes[c.node] ??= zero())[c.state]++;
    if ((c.state === 'failed' || c.state === 'broken') && !s.firstFailure) s.firstFailure = `[${c.node}] ${c.name}: ${c.message ?? ''}`;
  }
  for (const s of suites.values()) s.state = worst(checks.filter((c) => c.suite === s.name).map((c) => c.state));
  const list = [...suites.values()];
  const summary: RunSummary = {
    schemaVersion: SUMMARY_SCHEMA_VERSION,
    runId,
    cluster,
    state: worst(list.map((s) => s.state)),
    startedAt: startedAt.toISOString(),
    durationMs: Date.now() - startedAt.getTime(),
    suites: list,
    checks,
    pods: { total: pods.length, privileged: pods.filter((p) => p.privileged.length > 0) },
    exitCode: 0,
    ...(problems.rerun ? { continues: { runId: problems.rerun.of, checks: problems.rerun.checks.length } } : {}),
  };
  summary.exitCode = exitCodeOf(summary);
  return summary;
}

/**
 * The exit code of a run: a failed check outranks a broken one (a definite finding about the
 * product); a run in which every check was skipped (or that had none) checked nothing and does not pass.
 */
export function exitCodeOf(summary: Pick<RunSummary, 'suites'>): number {
  if (summary.suites.some((s) => s.counts.failed > 0)) return ExitCode.Failed;
  if (summary.suites.some((s) => s.counts.broken > 0)) return ExitCode.Broken;
  const checked = summary.suites.reduce((n, s) => n + s.counts.passed, 0);
  return checked === 0 ? ExitCode.NothingChecked : ExitCode.Passed;
}

/** Collects module results for summarize(); vitest calls it in the CLI process. */
export class SummaryReporter implements Reporter {
  modules: readonly TestModule[] = [];
  onTestRunEnd(testModules: readonly TestModule[]): void {
    this.modules = testModules;
  }
}

const ICON: Record<State, string> = { passed: 'PASS', failed: 'FAIL', broken: 'BROKEN', skipped: 'SKIP' };

export function table(summary: RunSummary): string {
  const t = new Table({ head: ['suite', 'result', 'passed', 'failed', 'broken', 'skipped', 'time', 'first failure'], style: { head: [], border: [] }, colWidths: [24, 8, 8, 8, 8, 9, 8, 60], wordWrap: true });
  for (const s of summary.suites) {
    t.push([s.name, ICON[s.state], s.counts.passed, s.counts.failed, s.counts.broken, s.counts.skipped, `${(s.durationMs / 1000).toFixed(1)}s`, s.firstFailure ?? '']);
  }
  return t.toString();
}

/** The run's warnings, one line each (printed under the table: a passing run can still need work). */
export function warningLines(summary: RunSummary): string[] {
  return summary.checks.flatMap((c) => (c.warnings ?? []).map((w) => `WARNING \`${c.suite}\` [${c.node}] ${w.replace(/\n/g, ' ')}`));
}

export function markdown(summary: RunSummary): string {
  const warnings = warningLines(summary);
  const lines = [
    `# gvisor-e2e run ${summary.runId}`,
    '',
    `Cluster \`${summary.cluster}\` — **${ICON[summary.state]}** in ${(summary.durationMs / 1000).toFixed(1)}s (started ${summary.startedAt}).`,
    '',
    '| suite | result | passed | failed | broken | skipped | time | first failure |',
    '|---|---|---|---|---|---|---|---|',
    ...summary.suites.map(
      (s) => `| ${s.name} | ${ICON[s.state]} | ${s.counts.passed} | ${s.counts.failed} | ${s.counts.broken} | ${s.counts.skipped} | ${(s.durationMs / 1000).toFixed(1)}s | ${(s.firstFailure ?? '').replace(/\|/g, '\\|').replace(/\n/g, ' ')} |`,
    ),
    '',
    'Evidence for every check (commands run on the node, probe output, the node\'s files on failure) is attached in the Allure report: `html/index.html` (and `html/<suite>/index.html`), raw in `allure-results/`; command transcripts per suite in `transcripts/`.',
    '',
    '## Per node',
    '',
    '| suite | node | passed | failed | broken | skipped |',
    '|---|---|---|---|---|---|',
    ...summary.suites.flatMap((s) => Object.entries(s.nodes).map(([n, c]) => `| ${s.name} | ${n} | ${c.passed} | ${c.failed} | ${c.broken} | ${c.skipped} |`)),
    '',
    '## Pods',
    '',
    summary.pods.privileged.length === 0
      ? `The checks created ${summary.pods.total} pod(s), none privileged (no privileged container, host namespace, added capability, privilege escalation, hostPath or ServiceAccount token).`
      : `The checks created ${summary.pods.total} pod(s); these had more than least privilege:`,
    ...summary.pods.privileged.map((p) => `- \`${p.suite}\` [${p.node}] ${p.pod} (${p.handler}): ${p.privileged.join('; ')}`),
    '',
    ...(warnings.length ? ['## Warnings', '', ...warnings.map((w) => `- ${w}`), ''] : []),
    '## Checks',
    '',
    ...summary.checks.map((c) => `- ${ICON[c.state]} \`${c.suite}\` [${c.node}] ${c.name}${c.message ? ` — ${c.message.replace(/\n/g, ' ')}` : ''}`),
    '',
  ];
  return lines.join('\n');
}

const xml = (s: string) => s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!).replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, '');

/**
 * JUnit XML as CI servers read it: one <testsuite> per suite, classname "gvisor-e2e.<suite>.<node>";
 * failed checks are <failure>, broken ones <error> (infrastructure), skipped ones <skipped>.
 */
export function junit(summary: RunSummary, only?: string): string {
  const suites = summary.suites.filter((s) => !only || s.name === only);
  const cases = (suite: string) => summary.checks.filter((c) => c.suite === suite);
  const count = (st: State, suite?: string) => summary.checks.filter((c) => (!suite || c.suite === suite) && (!only || c.suite === only) && c.state === st).length;
  const total = suites.reduce((n, s) => n + cases(s.name).length, 0);
  const out = [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites name="gvisor-e2e ${xml(summary.runId)}" tests="${total}" failures="${count('failed')}" errors="${count('broken')}" skipped="${count('skipped')}" time="${(summary.durationMs / 1000).toFixed(3)}">`,
  ];
  for (const s of suites) {
    const cs = cases(s.name);
    out.push(
      `  <testsuite name="${xml(s.name)}" tests="${cs.length}" failures="${count('failed', s.name)}" errors="${count('broken', s.name)}" skipped="${count('skipped', s.name)}" time="${(s.durationMs / 1000).toFixed(3)}" timestamp="${summary.startedAt}">`,
    );
    for (const c of cs) {
      const head = `    <testcase classname="gvisor-e2e.${xml(c.suite)}.${xml(c.node)}" name="${xml(c.name)}" time="${(c.durationMs / 1000).toFixed(3)}"`;
      const msg = xml(c.message ?? '');
      if (c.state === 'passed') out.push(`${head}/>`);
      else if (c.state === 'skipped') out.push(`${head}><skipped message="${msg}"/></testcase>`);
      else if (c.state === 'failed') out.push(`${head}><failure type="failed" message="${msg}">${msg}</failure></testcase>`);
      else out.push(`${head}><error type="broken" message="${msg}">${msg}</error></testcase>`);
    }
    out.push('  </testsuite>');
  }
  out.push('</testsuites>', '');
  return out.join('\n');
}

export function writeReports(run: RunDir, summary: RunSummary): void {
  writeFileSync(run.summaryJson, redact(JSON.stringify(summary, null, 2)));
  writeFileSync(run.summaryMd, redact(markdown(summary)));
  writeFileSync(run.junitXml, redact(junit(summary)));
  for (const s of summary.suites) {
    mkdirSync(dirname(run.junitOf(s.name)), { recursive: true });
    writeFileSync(run.junitOf(s.name), redact(junit(summary, s.name)));
  }
}
