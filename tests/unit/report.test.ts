import { AssertionError } from 'node:assert';
import { describe, expect, it } from 'vitest';
import { privilegeOf, testPod } from '../../harness/kube.ts';
import { criPrivilegeOf } from '../../harness/sandbox.ts';
import { CriError } from '../../harness/cri.ts';
import { ConfigError, ExitCode, InfrastructureError, isInfrastructureError, TimeoutError } from '../../harness/errors.ts';
import { classify, markdown, suiteOf, table, type RunSummary } from '../../harness/report.ts';
import { SandboxStartError } from '../../harness/sandbox.ts';

const assertion = () => new AssertionError({ message: 'expected ready', actual: false, expected: true, operator: '===' });
const cri = () => new CriError('RunPodSandbox', 'node-1', Object.assign(new Error('boom'), { code: 2, details: 'no runtime for "runsc" is configured', metadata: {} }) as never);

describe('classify', () => {
  it('a failure without errors counts as failed', () => {
    expect(classify([])).toBe('failed');
    expect(classify(undefined)).toBe('failed');
  });

  it('product errors are failed', () => {
    expect(classify([assertion()])).toBe('failed');
    expect(classify([new SandboxStartError('runsc', 'node-1', 'unknown handler')])).toBe('failed');
    expect(classify([cri()])).toBe('failed');
    expect(classify([assertion(), cri()])).toBe('failed');
  });

  it('serialized errors (plain objects from the test worker) classify by name', () => {
    expect(classify([{ name: 'AssertionError', message: 'expected 1 to be 2' }])).toBe('failed');
    expect(classify([{ name: 'InfrastructureError', message: 'ssh refused' }])).toBe('broken');
    expect(classify([{ message: 'no name' }])).toBe('broken');
  });

  it('infrastructure and programming errors are broken', () => {
    expect(classify([new InfrastructureError('ssh refused')])).toBe('broken');
    expect(classify([new TimeoutError('containerd', 1000)])).toBe('broken');
    expect(classify([new TypeError('x is undefined')])).toBe('broken');
    expect(classify([new Error('plain')])).toBe('broken');
  });

  it('a mix of product and infrastructure errors is broken', () => {
    expect(classify([assertion(), new InfrastructureError('ssh refused')])).toBe('broken');
    expect(classify([new TypeError('x'), cri()])).toBe('broken');
  });
});

describe('suiteOf', () => {
  it('takes the suite directory name', () => {
    expect(suiteOf('/x/suites/net-raw/net-raw.suite.ts')).toBe('net-raw');
    expect(suiteOf('/work/main/suites/limit-nofile/limit-nofile.suite.ts')).toBe('limit-nofile');
  });
});

describe('errors', () => {
  it('ConfigError lists source, paths and messages; an empty path is (root)', () => {
    const e = new ConfigError('c.yaml', [
      { path: 'gvisor.pools[0]', message: 'no pool "x"' },
      { path: '', message: 'bad' },
    ]);
    expect(e.message).toBe('c.yaml: gvisor.pools[0]: no pool "x"; (root): bad');
    expect(e.name).toBe('ConfigError');
    expect(e).toBeInstanceOf(Error);
  });

  it('TimeoutError is an InfrastructureError that names what was awaited', () => {
    const e = new TimeoutError('containerd to restart on node-1', 1500);
    expect(e.message).toBe('timed out after 1.5s waiting for containerd to restart on node-1');
    expect(e).toBeInstanceOf(InfrastructureError);
    expect(isInfrastructureError(e)).toBe(true);
  });

  it('isInfrastructureError', () => {
    expect(isInfrastructureError(new InfrastructureError('x', { cause: new Error('y') }))).toBe(true);
    expect(isInfrastructureError(Object.assign(new Error('from a worker'), { name: 'InfrastructureError' }))).toBe(true);
    expect(isInfrastructureError(new Error('x'))).toBe(false);
    expect(isInfrastructureError(new ConfigError('c', []))).toBe(false);
    expect(isInfrastructureError({ name: 'InfrastructureError', message: 'not an Error' })).toBe(false);
    expect(isInfrastructureError(undefined)).toBe(false);
  });

  it('exit codes are distinct', () => {
    expect(ExitCode).toEqual({ Passed: 0, Failed: 1, Broken: 2, NothingChecked: 3, Usage: 64 });
  });
});

const SUMMARY: RunSummary = {
  schemaVersion: 1,
  exitCode: 1,
  runId: 'run-20250101-abcdef',
  cluster: 'gvisor-e2e',
  state: 'failed',
  startedAt: '2025-01-01T00:00:00.000Z',
  durationMs: 12_345,
  suites: [
    {
      name: 'net-raw',
      state: 'failed',
      durationMs: 4_200,
      counts: { passed: 1, failed: 1, broken: 0, skipped: 0 },
      nodes: { 'node-1': { passed: 1, failed: 1, broken: 0, skipped: 0 } },
      firstFailure: '[node-1] ping is refused: output a | b\nsecond line',
    },
    {
      name: 'sandbox-dmesg',
      state: 'passed',
      durationMs: 1_050,
      counts: { passed: 2, failed: 0, broken: 0, skipped: 0 },
      nodes: { 'node-1': { passed: 1, failed: 0, broken: 0, skipped: 0 }, 'node-2': { passed: 1, failed: 0, broken: 0, skipped: 0 } },
    },
    {
      name: 'limit-nofile',
      state: 'skipped',
      durationMs: 0,
      counts: { passed: 0, failed: 0, broken: 0, skipped: 3 },
      nodes: { 'node-1': { passed: 0, failed: 0, broken: 0, skipped: 3 } },
    },
  ],
  checks: [
    { suite: 'net-raw', node: 'node-1', name: 'ping works', state: 'passed', durationMs: 100, notes: [], warnings: [], attempts: 1 },
    { suite: 'net-raw', node: 'node-1', name: 'ping is refused', state: 'failed', durationMs: 200, message: 'output a | b\nsecond line', notes: [], warnings: [], attempts: 1 },
    { suite: 'sandbox-dmesg', node: 'node-2', name: 'boots', state: 'passed', durationMs: 300, notes: [], warnings: [], attempts: 1 },
  ],
  pods: { total: 3, privileged: [] },
};

describe('markdown', () => {
  const md = markdown(SUMMARY);
  const lines = md.split('\n');

  it('has a title and the overall state', () => {
    expect(lines[0]).toBe('# gvisor-e2e run run-20250101-abcdef');
    expect(md).toContain('Cluster `gvisor-e2e` — **FAIL** in 12.3s (started 2025-01-01T00:00:00.000Z).');
  });

  it('has one row per suite, with `|` escaped and newlines flattened in the first failure', () => {
    expect(lines).toContain('| net-raw | FAIL | 1 | 1 | 0 | 0 | 4.2s | [node-1] ping is refused: output a \\| b second line |');
    expect(lines).toContain('| sandbox-dmesg | PASS | 2 | 0 | 0 | 0 | 1.1s |  |');
    expect(lines).toContain('| limit-nofile | SKIP | 0 | 0 | 0 | 3 | 0.0s |  |');
  });

  it('every table row has the header column count (no unescaped |)', () => {
    const rows = lines.filter((l) => l.startsWith('| ') && !l.startsWith('| suite | node'));
    expect(rows.length).toBeGreaterThan(3);
    for (const row of rows.slice(0, 4)) {
      const cells = row.replace(/\\\|/g, '').split('|').length - 2;
      expect(cells, row).toBe(8);
    }
  });

  it('has per-node rows', () => {
    expect(lines).toContain('| sandbox-dmesg | node-1 | 1 | 0 | 0 | 0 |');
    expect(lines).toContain('| sandbox-dmesg | node-2 | 1 | 0 | 0 | 0 |');
    expect(lines).toContain('| limit-nofile | node-1 | 0 | 0 | 0 | 3 |');
  });

  it('lists every check with its state and a one-line message', () => {
    expect(lines).toContain('- PASS `net-raw` [node-1] ping works');
    expect(lines).toContain('- FAIL `net-raw` [node-1] ping is refused — output a | b second line');
    expect(lines).toContain('- PASS `sandbox-dmesg` [node-2] boots');
  });
});

describe('pods and their privileges', () => {
  it('a run without privileged pods says so, with the count', () => {
    expect(markdown(SUMMARY)).toContain('The checks created 3 pod(s), none privileged');
  });

  it('privileged pods are named with the suite, node and why', () => {
    const md = markdown({ ...SUMMARY, pods: { total: 2, privileged: [{ suite: 'net-raw', node: 'node-1', pod: 'ns/probe-1', handler: 'runsc', privileged: ['container main: privileged', 'hostNetwork'] }] } });
    expect(md).toContain('The checks created 2 pod(s); these had more than least privilege:');
    expect(md).toContain('- `net-raw` [node-1] ns/probe-1 (runsc): container main: privileged; hostNetwork');
  });

  it("the suites' own pod specs are least privilege", () => {
    const spec = testPod({ name: 'p', namespace: 'n', runId: 'r', image: 'i', command: ['true'] }, { runtimeClassName: 'gvisor' }).spec;
    expect(privilegeOf(spec)).toEqual([]);
    expect(criPrivilegeOf({ linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } } }, { linux: { security_context: { no_new_privs: true } } })).toEqual([]);
  });

  it('privilegeOf / criPrivilegeOf name each excess', () => {
    expect(
      privilegeOf({
        hostNetwork: true,
        containers: [{ name: 'c', securityContext: { privileged: true, capabilities: { add: ['NET_ADMIN'] } } }],
        volumes: [{ name: 'root', hostPath: { path: '/' } }],
      }),
    ).toEqual(['hostNetwork', 'mounts a ServiceAccount token', 'container c: privileged', 'container c: allows privilege escalation', 'container c: adds capabilities NET_ADMIN', 'volume root: hostPath /']);
    expect(criPrivilegeOf({ linux: { security_context: { namespace_options: { network: 'NODE' } } } }, { linux: { security_context: { privileged: true } } })).toEqual([
      'host network namespace',
      'privileged container',
      'allows privilege escalation (no_new_privs unset)',
    ]);
  });
});

describe('table', () => {
  it('shows each suite with its state, counts and time', () => {
    const t = table(SUMMARY);
    const row = t.split('\n').find((l) => l.includes('sandbox-dmesg'));
    expect(row).toBeDefined();
    expect(row).toMatch(/sandbox-dmesg\s*│\s*PASS\s*│\s*2\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*1\.1s/);
    expect(t).toMatch(/net-raw\s*│\s*FAIL\s*│\s*1\s*│\s*1\s*│/);
    expect(t).toMatch(/limit-nofile\s*│\s*SKIP/);
    expect(t).toContain('first failure');
  });
});
