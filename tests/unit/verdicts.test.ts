import { describe, expect, it } from 'vitest';
import type { TestModule } from 'vitest/node';
import type { CriClient } from '../../harness/cri.ts';
import { ExitCode, InfrastructureError } from '../../harness/errors.ts';
import { criInfrastructureFault } from '../../harness/faults.ts';
import { sandboxRefusal, unschedulableBySelector } from '../../harness/kube.ts';
import type { NodeAccess } from '../../harness/node.ts';
import { exitCodeOf, summarize, type RunSummary, type State } from '../../harness/report.ts';
import { runOneShot } from '../../harness/sandbox.ts';

// Infrastructure faults are never `failed` (issue 11, item 16), and a run that checked nothing
// never exits 0 (item 17). The real-component side is in tests/e2e/verdicts-secrets.test.ts.

describe('CRI errors: which mean "could not ask"', () => {
  it.each([
    [14, 'connection refused'], // UNAVAILABLE
    [13, 'transport: internal'], // INTERNAL
    [8, 'resource exhausted'],
    [2, 'failed to create containerd task: write /var/lib/x: no space left on device'],
    [5, 'failed to get image "docker.io/library/busybox:gone": not found'],
    [2, 'failed to get sandbox image "registry.k8s.io/pause:3.10": failed to pull image'],
    [2, 'ENOSPC while writing the rootfs'],
  ])('code %i, %s: infrastructure', (code, details) => {
    expect(criInfrastructureFault({ code, details })).toBe(true);
  });
  it.each([
    [2, 'failed to get sandbox runtime: no runtime for "runsc" is configured'],
    [2, 'failed to create containerd task: failed to start shim: exec: "containerd-shim-runsc-v1": executable file not found in $PATH'],
    [2, 'OCI runtime create failed: runsc: permission denied'],
  ])("code %i, %s: the runtime's answer", (code, details) => {
    expect(criInfrastructureFault({ code, details })).toBe(false);
  });
});

describe('FailedCreatePodSandBox', () => {
  const ev = (message: string, count?: number) => ({ reason: 'FailedCreatePodSandBox', message, count });
  const handler = 'rpc error: code = Unknown desc = failed to get sandbox runtime: no runtime for "runsc" is configured';
  it('the first one is not a verdict: the kubelet retries', () => {
    expect(sandboxRefusal([])).toBeUndefined();
    expect(sandboxRefusal([{ reason: 'Scheduled', message: 'ok' }, ev(handler, 1)])).toBeUndefined();
  });
  it("repeated, it is the node's answer", () => {
    expect(sandboxRefusal([ev(handler, 2)])).toEqual({ message: handler, infrastructure: false });
    expect(sandboxRefusal([ev(handler), ev(handler)])).toEqual({ message: handler, infrastructure: false });
  });
  it('for lack of room or of the sandbox image, it is the infrastructure at once', () => {
    expect(sandboxRefusal([ev('failed to get sandbox image "pause:3.10": not found', 1)])?.infrastructure).toBe(true);
    expect(sandboxRefusal([ev('mkdir /run/containerd/x: no space left on device', 1)])?.infrastructure).toBe(true);
  });
});

describe('Unschedulable', () => {
  it('only a node selector/affinity no node matches is the cluster\'s answer', () => {
    expect(unschedulableBySelector("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.")).toBe(true);
    expect(unschedulableBySelector('0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn\'t match Pod\'s node affinity/selector.')).toBe(false);
    // A kind / kubeadm control plane is ruled out by its taint first; the rest by the selector.
    expect(unschedulableBySelector("0/3 nodes are available: 1 node(s) had untolerated taint(s), 2 node(s) didn't match Pod's node affinity/selector. no new claims to deallocate")).toBe(true);
    expect(unschedulableBySelector('0/3 nodes are available: 3 node(s) had untolerated taint(s).')).toBe(false);
    expect(unschedulableBySelector('0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.')).toBe(false);
    expect(unschedulableBySelector("0/2 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) didn't match Pod's node affinity/selector.")).toBe(false);
    expect(unschedulableBySelector('no nodes available to schedule pods')).toBe(false);
  });
});

describe('a CRI log that cannot be read', () => {
  it('is broken, not empty output', async () => {
    const cri = {
      runPodSandbox: async () => 'pod-1',
      podSandboxStatus: async () => ({ status: {}, info: {} }),
      createContainer: async () => 'c-1',
      startContainer: async () => undefined,
      waitForExit: async () => ({ exit_code: 0, reason: 'Completed' }),
      stopPodSandbox: async () => undefined,
      removePodSandbox: async () => undefined,
    } as unknown as CriClient;
    const node = {
      name: 'node-1',
      exec: async (cmd: string) => (cmd.startsWith('cat ') ? { code: 1, stdout: '', stderr: 'cat: main.log: Permission denied' } : { code: 0, stdout: '', stderr: '' }),
    } as unknown as NodeAccess;
    const run = runOneShot(node, cri, { handler: 'runsc', image: 'busybox', command: ['dmesg'], name: 'x', runId: 'r', podLogDir: '/var/log/x', timeoutMs: 1000 });
    await expect(run).rejects.toBeInstanceOf(InfrastructureError);
    await expect(run).rejects.toThrow(/cannot read the log of container x-[0-9a-f]+\/main on node-1/);
  });
});

/** A TestModule as the summary reads it. */
function module(suite: string, tests: { name: string; state: 'passed' | 'failed' | 'skipped'; node?: string; errors?: { name: string; message: string }[] }[], errors: { message: string }[] = []): TestModule {
  const all = tests.map((t) => ({
    name: t.name,
    parent: { type: 'suite', name: t.node ?? 'node-1' },
    result: () => ({ state: t.state, errors: t.errors, note: t.state === 'skipped' ? 'no SSH access' : undefined }),
    diagnostic: () => ({ duration: 1, retryCount: 0 }),
    annotations: () => [],
  }));
  return {
    moduleId: `/x/suites/${suite}/${suite}.suite.ts`,
    diagnostic: () => ({ duration: 1 }),
    errors: () => errors,
    children: { allTests: () => all[Symbol.iterator]() },
  } as unknown as TestModule;
}

const run = (modules: TestModule[], suites: string[], problems = {}): RunSummary => summarize('r', 'c', new Date(), modules, suites, problems);
const counts = (s: RunSummary): Record<State, number> => s.checks.reduce((c, x) => ((c[x.state] += 1), c), { passed: 0, failed: 0, broken: 0, skipped: 0 });

describe('a run that checked nothing does not exit 0', () => {
  it('passed checks exit 0; a failed one 1', () => {
    expect(exitCodeOf(run([module('net-raw', [{ name: 'a', state: 'passed' }, { name: 'b', state: 'skipped' }])], ['net-raw']))).toBe(ExitCode.Passed);
    expect(exitCodeOf(run([module('net-raw', [{ name: 'a', state: 'failed', errors: [{ name: 'AssertionError', message: 'x' }] }])], ['net-raw']))).toBe(ExitCode.Failed);
  });
  it('every check skipped: exit 3 (nothing checked)', () => {
    const s = run([module('net-raw', [{ name: 'a', state: 'skipped' }]), module('limit-nofile', [{ name: 'b', state: 'skipped' }])], ['net-raw', 'limit-nofile']);
    expect(s.state).toBe('skipped');
    expect(exitCodeOf(s)).toBe(ExitCode.NothingChecked);
    expect(ExitCode.NothingChecked).toBe(3);
  });
  it('a suite file that did not load is broken (exit 2), even beside passed checks', () => {
    const s = run([module('net-raw', [{ name: 'a', state: 'passed' }]), module('limit-nofile', [], [{ message: "Cannot find module './gone.ts'" }])], ['net-raw', 'limit-nofile']);
    expect(s.checks.find((c) => c.suite === 'limit-nofile')).toMatchObject({ name: '(suite setup)', state: 'broken' });
    expect(exitCodeOf(s)).toBe(ExitCode.Broken);
  });
  it('a suite file that declared no checks, or is missing, is broken', () => {
    const s = run([module('net-raw', [{ name: 'a', state: 'passed' }]), module('limit-nofile', [])], ['net-raw', 'limit-nofile', 'sandbox-dmesg'], { missingSuites: ['sandbox-dmesg'] });
    expect(s.checks.filter((c) => c.state === 'broken').map((c) => [c.suite, c.name, c.message])).toEqual([
      ['sandbox-dmesg', '(suite file)', 'the suite file suites/sandbox-dmesg/sandbox-dmesg.suite.ts does not exist'],
      ['limit-nofile', '(suite file)', 'limit-nofile declared no checks'],
    ]);
    expect(exitCodeOf(s)).toBe(ExitCode.Broken);
  });
  it("vitest's unhandled errors make the run broken, even when every check passed", () => {
    const s = run([module('net-raw', [{ name: 'a', state: 'passed' }])], ['net-raw'], { unhandledErrors: [{ name: 'Error', message: 'Unhandled rejection: socket hang up' }] });
    expect(counts(s)).toEqual({ passed: 1, failed: 0, broken: 1, skipped: 0 });
    expect(s.checks.at(-1)).toMatchObject({ name: '(unhandled error)', message: 'Error: Unhandled rejection: socket hang up' });
    expect(exitCodeOf(s)).toBe(ExitCode.Broken);
  });
});
