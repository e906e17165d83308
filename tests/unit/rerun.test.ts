// --rerun-failed: which checks of an earlier run run again (as vitest test-name patterns, per suite
// file), which results of the new run count, and how a run is named on the command line.
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { TestModule } from 'vitest/node';
import { ConfigError } from '../../harness/errors.ts';
import { summarize, type CheckResult, type RunSummary } from '../../harness/report.ts';
import { fullName, loadRunSummary, rerunSelection } from '../../harness/rerun.ts';

const check = (suite: string, node: string, name: string, state: CheckResult['state']): CheckResult => ({ suite, node, name, state, durationMs: 1, notes: [], warnings: [], attempts: 1 });

function summaryOf(checks: CheckResult[], runId = '20260101-000000-aaaa'): RunSummary {
  const suites = [...new Set(checks.map((c) => c.suite))].map((name) => ({ name, state: 'failed' as const, durationMs: 1, counts: { passed: 0, failed: 0, broken: 0, skipped: 0 }, nodes: {} }));
  return { schemaVersion: 1, runId, cluster: 'c', state: 'failed', exitCode: 1, startedAt: '2026-01-01T00:00:00.000Z', durationMs: 1, suites, checks, pods: { total: 0, privileged: [] } };
}

const PREV = summaryOf([
  check('net-raw', 'gvisor-1', 'raw sockets work (net-raw "true")', 'failed'),
  check('net-raw', 'gvisor-2', 'raw sockets work (net-raw "true")', 'passed'),
  check('runsc-installation', 'gvisor-1', 'runsc.toml sets net-raw = "true"', 'broken'),
  check('runsc-installation', 'gvisor-1', 'runsc runs', 'passed'),
  check('sandbox-dmesg', 'gvisor-1', 'boot log', 'passed'),
  check('runtimeclass-scheduling', 'cluster', 'a pod lands (x+y)?', 'failed'),
]);

describe('rerunSelection', () => {
  const sel = rerunSelection(PREV);
  it('takes the failed and broken checks, and only their suites', () => {
    expect(sel.of).toBe(PREV.runId);
    expect(sel.checks.map((c) => c.state)).toEqual(['failed', 'broken', 'failed']);
    expect(sel.suites).toEqual(['net-raw', 'runsc-installation', 'runtimeclass-scheduling']);
    expect(sel.nodes).toEqual(['gvisor-1', 'cluster']);
  });

  it("matches vitest's full name (describe + title) of exactly those checks, regex characters taken literally", () => {
    const netRaw = sel.patterns.get('net-raw')!;
    expect(netRaw.test(fullName('gvisor-1', 'raw sockets work (net-raw "true")'))).toBe(true);
    expect(netRaw.test(fullName('gvisor-2', 'raw sockets work (net-raw "true")'))).toBe(false);
    expect(netRaw.test(fullName('gvisor-1', 'raw sockets work (net-raw "true") too'))).toBe(false);
    expect(sel.patterns.get('runsc-installation')!.test('gvisor-1 runsc runs')).toBe(false);
    expect(sel.patterns.get('runtimeclass-scheduling')!.test('cluster a pod lands (x+y)?')).toBe(true);
    expect(sel.patterns.get('runtimeclass-scheduling')!.test('cluster a pod lands xxy')).toBe(false);
    expect(sel.selects('net-raw', 'gvisor-1', 'raw sockets work (net-raw "true")')).toBe(true);
    expect(sel.selects('net-raw', 'gvisor-2', 'raw sockets work (net-raw "true")')).toBe(false);
  });

  it('a suite that broke as a whole runs again as a whole', () => {
    const s = rerunSelection(summaryOf([check('limit-nofile', '-', '(suite setup)', 'broken'), check('net-raw', 'n', 'x', 'failed')]));
    expect(s.patterns.get('limit-nofile')).toBeUndefined();
    expect(s.patterns.has('limit-nofile')).toBe(true);
    expect(s.selects('limit-nofile', 'n', 'anything')).toBe(true);
    expect(s.selects('net-raw', 'n', 'y')).toBe(false);
  });
});

describe('summarize of a rerun', () => {
  const test = (name: string, node: string, state: 'passed' | 'failed' | 'skipped') => ({
    name,
    parent: { type: 'suite', name: node },
    result: () => ({ state, errors: state === 'failed' ? [{ name: 'AssertionError', message: 'no' }] : undefined }),
    diagnostic: () => ({ duration: 1, retryCount: 0 }),
    annotations: () => [],
  });
  const mod = (suite: string, tests: ReturnType<typeof test>[]) =>
    ({ moduleId: `/x/suites/${suite}/${suite}.suite.ts`, diagnostic: () => ({ duration: 1 }), errors: () => [], children: { allTests: () => tests[Symbol.iterator]() } }) as unknown as TestModule;

  it('keeps only the selected checks, says which run it continues, and a selected check that is gone is broken', () => {
    const sel = rerunSelection(PREV);
    const s = summarize('r2', 'c', new Date(), [
      mod('net-raw', [test('raw sockets work (net-raw "true")', 'gvisor-1', 'passed'), test('raw sockets work (net-raw "true")', 'gvisor-2', 'skipped')]),
      mod('runsc-installation', [test('runsc.toml sets net-raw = "true"', 'gvisor-1', 'passed'), test('runsc runs', 'gvisor-1', 'skipped')]),
      mod('runtimeclass-scheduling', []),
    ], sel.suites, { rerun: sel });
    expect(s.continues).toEqual({ runId: PREV.runId, checks: 3 });
    expect(s.checks.filter((c) => c.state === 'passed').map((c) => `${c.suite} ${c.node}`)).toEqual(['net-raw gvisor-1', 'runsc-installation gvisor-1']);
    expect(s.checks.some((c) => c.state === 'skipped')).toBe(false);
    const gone = s.checks.find((c) => c.suite === 'runtimeclass-scheduling' && c.node === 'cluster');
    expect(gone?.state).toBe('broken');
    expect(gone?.message).toContain(`run ${PREV.runId} had this check; this run did not declare it`);
  });
});

describe('loadRunSummary', () => {
  const reports = mkdtempSync(join(tmpdir(), 'gvisor-e2e-rerun-'));
  mkdirSync(join(reports, PREV.runId));
  const file = join(reports, PREV.runId, 'summary.json');
  writeFileSync(file, JSON.stringify(PREV));
  symlinkSync(PREV.runId, join(reports, 'latest'));

  it('finds a run by id, by its summary.json or directory, and the latest by default', () => {
    expect(loadRunSummary(PREV.runId, reports, '--rerun-failed').path).toBe(file);
    expect(loadRunSummary(file, reports, '--rerun-failed').summary.runId).toBe(PREV.runId);
    expect(loadRunSummary(join(reports, PREV.runId), reports, '--rerun-failed').path).toBe(file);
    expect(loadRunSummary(undefined, reports, '--rerun-failed').summary.runId).toBe(PREV.runId);
  });

  it('a run that is not there, or a file that is not a summary, is a usage error naming it', () => {
    expect(() => loadRunSummary('nope', reports, '--rerun-failed')).toThrow(ConfigError);
    expect(() => loadRunSummary('nope', reports, '--rerun-failed')).toThrow(`command line: --rerun-failed: no summary.json at nope or nope/summary.json or ${reports}/nope/summary.json`);
    const bad = join(reports, 'bad.json');
    writeFileSync(bad, '{"runId": 3}');
    expect(() => loadRunSummary(bad, reports, 'run')).toThrow(new RegExp(`^${bad}: schemaVersion: .*not a gvisor-e2e summary.json of this schema version`));
    writeFileSync(bad, '{');
    expect(() => loadRunSummary(bad, reports, 'run')).toThrow(`${bad}: (root): not JSON`);
  });
});
