// summary.json is a contract with CI tools: the shipped JSON Schema is the zod schema's current
// output, and a summary.json as the harness writes it is valid against the shipped file.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { TestModule } from 'vitest/node';
import { ExitCode } from '../../harness/errors.ts';
import { PACKAGE_DIR } from '../../harness/paths.ts';
import { exitCodeOf, summarize, writeReports } from '../../harness/report.ts';
import { RunDir } from '../../harness/rundir.ts';
import { summaryJsonSchema, SUMMARY_SCHEMA_VERSION } from '../../harness/summary-schema.ts';
import { z } from 'zod';

const SHIPPED = join(PACKAGE_DIR, 'reports', 'summary.schema.json');

function module(suite: string, tests: { name: string; state: 'passed' | 'failed' | 'skipped'; node?: string; errors?: { name: string; message: string }[] }[]): TestModule {
  const all = tests.map((t) => ({
    name: t.name,
    parent: { type: 'suite', name: t.node ?? 'node-1' },
    result: () => ({ state: t.state, errors: t.errors, note: t.state === 'skipped' ? 'no SSH access' : undefined }),
    diagnostic: () => ({ duration: 1, retryCount: 0 }),
    annotations: () => [],
  }));
  return { moduleId: `/x/suites/${suite}/${suite}.suite.ts`, diagnostic: () => ({ duration: 1 }), errors: () => [], children: { allTests: () => all[Symbol.iterator]() } } as unknown as TestModule;
}

describe('summary.json schema', () => {
  it('the shipped reports/summary.schema.json is what the zod schema generates (run `npm run schema` after changing it)', () => {
    expect(JSON.parse(readFileSync(SHIPPED, 'utf8'))).toEqual(summaryJsonSchema());
  });

  it('a summary.json written by the harness is valid against the shipped file; a wrong one is not', () => {
    const summary = summarize('20260101-000000-abcd', 'c', new Date(), [
      module('net-raw', [{ name: 'ping refused', state: 'failed', errors: [{ name: 'AssertionError', message: 'ping answered' }] }]),
      module('sandbox-dmesg', [{ name: 'boot log', state: 'passed' }, { name: 'api', state: 'skipped', node: 'node-2' }]),
    ], ['net-raw', 'sandbox-dmesg']);
    const run = new RunDir(mkdtempSync(join(tmpdir(), 'gvisor-e2e-schema-')), summary.runId);
    run.create();
    writeReports(run, summary);
    const written = JSON.parse(readFileSync(run.summaryJson, 'utf8'));
    const schema = z.fromJSONSchema(JSON.parse(readFileSync(SHIPPED, 'utf8')));
    expect(schema.safeParse(written).error).toBeUndefined();
    expect(written.schemaVersion).toBe(SUMMARY_SCHEMA_VERSION);
    expect(written.exitCode).toBe(ExitCode.Failed);
    expect(written.exitCode).toBe(exitCodeOf(summary));
    const { schemaVersion: _, ...unversioned } = written;
    expect(schema.safeParse(unversioned).success).toBe(false);
    expect(schema.safeParse({ ...written, schemaVersion: 2 }).success).toBe(false);
    expect(schema.safeParse({ ...written, checks: [{ ...written.checks[0], state: 'flaky' }] }).success).toBe(false);
  });
});
