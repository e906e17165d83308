// Measures, on the machine it runs on, against a fresh embedded Kubernetes cluster with cached
// binaries: cold start (up + install), the warm full run of all suites with the harness's own CPU and
// peak memory, and three ratios taken in the same run against fair baselines:
//   - the warm run against a floor: the same pods the suites started, started by a minimal script
//     (all API calls in parallel, no harness) and run to completion;
//   - the harness's SSH exec against `ssh` over a ControlMaster connection (both keep their connection);
//   - the harness's pod exec against a minimal client on @kubernetes/client-node's Exec.
// Writes bench/results/<date>.json; targets are reported beside the numbers, never asserted.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import * as k8s from '@kubernetes/client-node';
import { stringify } from 'yaml';
import { down } from '../bin/app.ts';
import { parseConfig, providerFor } from '../clusters/index.ts';
import { nodeConfig } from '../harness/config.ts';
import { createRunNamespace, execInPod, kubeConfig, testPod, watchPod } from '../harness/kube.ts';
import { openNode } from '../harness/node.ts';
import { ROOT_DIR } from '../harness/paths.ts';
import type { RunSummary } from '../harness/report.ts';
import { RUN_LABEL } from '../harness/sandbox.ts';
import { buildIfNeeded, cliMeasured, ENTRY, machine, type Measured } from './measure.ts';

const N = 30;
const dir = join(ROOT_DIR, 'bench', 'results');
mkdirSync(dir, { recursive: true });
const work = mkdtempSync(join(tmpdir(), 'gvisor-e2e-bench-'));
const name = `bench${process.pid}`;
const raw = {
  apiVersion: 'gvisor-e2e.dev/v1alpha1',
  kind: 'Config',
  cluster: { provider: 'local', name, kubernetes: true, pools: [{ name: 'gvisor', kind: 'host' }, { name: 'plain', kind: 'host' }, { name: 'systemd', kind: 'systemd' }] },
  gvisor: { pools: ['gvisor'] },
  containerd: { enableLimitNoFile: true },
  reportsDir: join(work, 'reports'),
};
const cfgPath = join(work, 'bench.yaml');
writeFileSync(cfgPath, stringify(raw));
const cfg = parseConfig(JSON.stringify(raw), cfgPath);

const summary = () => JSON.parse(readFileSync(join(work, 'reports', 'latest', 'summary.json'), 'utf8')) as RunSummary;
const r2 = (x: number) => +x.toFixed(2);
const cost = (m: Measured) => ({
  seconds: r2(m.ms / 1000),
  harnessCpuSeconds: m.harnessCpuSeconds,
  harnessShareOfRunCpu: m.harnessShareOfRunCpu,
  machineBusyCpuSeconds: m.machineBusyCpuSeconds,
  foreignCpuSeconds: m.foreignCpuSeconds,
  harnessPeakRssMiB: m.harnessPeakRssMiB,
  peakBreakdownMiB: m.peakBreakdownMiB,
  peakByRoleMiB: m.peakByRoleMiB,
  steps: m.steps,
});

/** A pod the suites started, as the floor repeats it. */
interface SeenPod {
  node: string;
  runtimeClassName?: string;
  image: string;
  started: boolean;
}

/** Watches the harness's test pods (by their run label) while `fn` runs; returns the ones whose container started. */
async function watchTestPods(kc: k8s.KubeConfig, fn: () => Promise<Measured>): Promise<{ m: Measured; pods: SeenPod[] }> {
  const seen = new Map<string, SeenPod>();
  const req = await new k8s.Watch(kc).watch(
    '/api/v1/pods',
    { labelSelector: RUN_LABEL },
    (_type: string, p: k8s.V1Pod) => {
      const uid = p.metadata?.uid ?? '';
      const s = seen.get(uid) ?? { node: p.spec?.nodeName ?? '', runtimeClassName: p.spec?.runtimeClassName, image: p.spec?.containers[0]?.image ?? '', started: false };
      s.node ||= p.spec?.nodeName ?? '';
      s.started ||= (p.status?.containerStatuses ?? []).some((c) => c.state?.running || c.state?.terminated?.startedAt);
      seen.set(uid, s);
    },
    () => undefined,
  );
  try {
    return { m: await fn(), pods: [...seen.values()] };
  } finally {
    req.abort();
  }
}

/**
 * The floor: the same pods (node, RuntimeClass, image) made by a minimal script, all at once, each
 * running `true`, until every one has finished and is deleted again.
 */
async function floor(kc: k8s.KubeConfig, pods: SeenPod[]): Promise<number> {
  if (pods.length === 0) throw new Error('floor: the warm run started no pod the watch saw');
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const ns = `bench-floor-${process.pid}`;
  await core.createNamespace({ body: { metadata: { name: ns } } });
  // The namespace's default ServiceAccount comes from the controller manager; pods wait for it.
  for (let i = 0; !(await core.listNamespacedServiceAccount({ namespace: ns })).items.length; i++) {
    if (i > 120) throw new Error(`no default ServiceAccount in namespace ${ns} after 60 s`);
    await new Promise((r) => setTimeout(r, 500));
  }
  try {
    const t0 = performance.now();
    const done = new Set<string>();
    let finished!: () => void;
    const all = new Promise<void>((r) => (finished = r));
    const req = await new k8s.Watch(kc).watch(
      `/api/v1/namespaces/${ns}/pods`,
      {},
      (_t: string, p: k8s.V1Pod) => {
        if (p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed') done.add(p.metadata!.name!);
        if (done.size === pods.length) finished();
      },
      () => undefined,
    );
    await Promise.all(
      pods.map((p, i) =>
        core.createNamespacedPod({
          namespace: ns,
          body: {
            metadata: { name: `floor-${i}` },
            spec: {
              nodeName: p.node,
              runtimeClassName: p.runtimeClassName,
              restartPolicy: 'Never',
              automountServiceAccountToken: false,
              terminationGracePeriodSeconds: 1,
              containers: [{ name: 'main', image: p.image, imagePullPolicy: 'Never', command: ['true'] }],
            },
          },
        }),
      ),
    );
    const timeout = setTimeout(() => finished(), 300_000);
    await all;
    clearTimeout(timeout);
    req.abort();
    if (done.size < pods.length) throw new Error(`floor: only ${done.size} of ${pods.length} pods finished within 300 s`);
    await core.deleteCollectionNamespacedPod({ namespace: ns, gracePeriodSeconds: 0 });
    for (let i = 0; (await core.listNamespacedPod({ namespace: ns })).items.length; i++) {
      if (i > 600) throw new Error(`floor: pods of ${ns} not gone after 300 s`);
      await new Promise((r) => setTimeout(r, 500));
    }
    return (performance.now() - t0) / 1000;
  } finally {
    await core.deleteNamespace({ name: ns }).catch(() => undefined);
  }
}

/** A minimal pod exec client: one KubeConfig and one Exec kept for every command, the WebSocket the API requires per exec. */
function minimalExec(exec: k8s.Exec, ns: string, pod: string): Promise<void> {
  const sink = () => new Writable({ write: (_c, _e, cb) => cb() });
  return new Promise((res, rej) => {
    exec.exec(ns, pod, 'main', ['true'], sink(), sink(), null, false).then((ws) => ws.on('close', () => res()), rej);
  });
}

const result: Record<string, unknown> = { date: new Date().toISOString(), machine: machine(), cli: ENTRY === 'dist' ? 'built package: node dist/bin/gvisor-e2e.js' : 'from source: node --import tsx bin/gvisor-e2e.ts' };
buildIfNeeded();
try {
  // Cold start: up + install (binaries cached), until the suites could start.
  const cold = await cliMeasured(cfgPath, ['install']);
  if (cold.code !== 0) throw new Error(`install failed: ${cold.stderr.slice(-800)}`);
  result.coldStart = cost(cold);

  // Warm full run: all suites on the installed cluster, twice (the second is the number), its pods watched.
  await cliMeasured(cfgPath, ['run', '--keep', '--no-install']);
  const kubeconfig = providerFor(cfg).kubeconfig()!;
  const kc = kubeConfig(kubeconfig);
  const { m: warm, pods } = await watchTestPods(kc, () => cliMeasured(cfgPath, ['run', '--keep', '--no-install']));
  const s = summary();
  result.warmRun = { ...cost(warm), state: s.state, checks: s.checks.length, suites: Object.fromEntries(s.suites.map((x) => [x.name, r2(x.durationMs / 1000)])) };
  result.machineAfterWarmRun = machine();

  // The floor for the warm run: the pods it started (not those refused or never scheduled, which start nothing).
  const started = pods.filter((p) => p.started && p.node);
  const floorSeconds = await floor(kc, started);
  result.floor = { seconds: r2(floorSeconds), pods: started.length, podsSeenInWarmRun: pods.length, ratio: r2(warm.ms / 1000 / floorSeconds), note: 'the same pods (node, RuntimeClass, image) created at once by a minimal client-node script, each running `true`, until all finished and were deleted' };

  // SSH exec: the harness's ssh2 connection vs OpenSSH over a ControlMaster connection, interleaved.
  const stateDir = join(process.env.HOME ?? '/root', '.local/state/gvisor-e2e', name);
  const local = JSON.parse(readFileSync(join(stateDir, 'state.json'), 'utf8')) as { nodes: { name: string; sshPort: number }[] };
  const port = local.nodes[0]!.sshPort;
  const key = join(stateDir, 'ssh/id_ed25519');
  const known = join(stateDir, 'ssh/known_hosts');
  const node = openNode(nodeConfig({ name: 'gvisor-1', pool: 'gvisor', access: { type: 'ssh', host: '127.0.0.1', port, user: 'root', privateKeyPath: key, knownHostsPath: known } }));
  const controlDir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-cm-'));
  const control = join(controlDir, 'cm');
  const ssh = (...extra: string[]) => execFileSync('ssh', ['-i', key, '-o', `UserKnownHostsFile=${known}`, '-o', 'StrictHostKeyChecking=yes', '-o', `ControlPath=${control}`, '-o', 'ControlMaster=auto', '-o', 'ControlPersist=300', '-p', String(port), ...extra, 'root@127.0.0.1', 'true']);
  try {
    await node.exec('true');
    ssh();
    let harnessMs = 0;
    let cmMs = 0;
    for (let i = 0; i < N; i++) {
      let t0 = performance.now();
      await node.exec('true');
      harnessMs += performance.now() - t0;
      t0 = performance.now();
      ssh();
      cmMs += performance.now() - t0;
    }
    result.sshExec = { harnessMs: r2(harnessMs / N), controlMasterSshMs: r2(cmMs / N), ratio: r2(harnessMs / cmMs), runs: N, note: 'both keep one connection to the node (ssh2 in the harness; `ssh` with ControlMaster/ControlPersist, a process per command)' };
  } finally {
    await node.close();
    try {
      execFileSync('ssh', ['-o', `ControlPath=${control}`, '-O', 'exit', '-p', String(port), 'root@127.0.0.1'], { stdio: 'ignore' });
    } catch {
      /* the master is gone already */
    }
    rmSync(controlDir, { recursive: true, force: true });
  }

  // Pod exec: the harness's execInPod vs a minimal client-node Exec kept across commands, interleaved.
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const ns = await createRunNamespace(core, `bench-exec-${process.pid}`, 'bench');
  try {
    const image = started[0]?.image ?? 'gvisor-e2e.local/busybox:latest';
    await core.createNamespacedPod({ namespace: ns, body: testPod({ name: 'sleeper', namespace: ns, runId: 'bench', image, command: ['sleep', '3600'] }, { nodeName: 'plain-1' }) });
    await watchPod(kc, ns, 'sleeper', () => `pod ${ns}/sleeper to run`, 120_000, async (p) => p.status?.phase === 'Running');
    const exec = new k8s.Exec(kc);
    await execInPod(kc, ns, 'sleeper', 'main', ['true']);
    await minimalExec(exec, ns, 'sleeper');
    let harnessMs = 0;
    let minimalMs = 0;
    for (let i = 0; i < N; i++) {
      let t0 = performance.now();
      const r = await execInPod(kc, ns, 'sleeper', 'main', ['true']);
      harnessMs += performance.now() - t0;
      if (r.code !== 0) throw new Error(`exec in pod exited ${r.code}: ${r.stderr}`);
      t0 = performance.now();
      await minimalExec(exec, ns, 'sleeper');
      minimalMs += performance.now() - t0;
    }
    result.podExec = { harnessMs: r2(harnessMs / N), minimalClientMs: r2(minimalMs / N), ratio: r2(harnessMs / minimalMs), runs: N, note: 'the exec subresource takes one WebSocket per command (no client can keep one across commands); the minimal client keeps its KubeConfig and Exec' };
  } finally {
    await core.deleteNamespace({ name: ns }).catch(() => undefined);
  }
  const f = result.floor as { ratio: number };
  const se = result.sshExec as { ratio: number };
  const pe = result.podExec as { ratio: number };
  result.targets = {
    sshExecWithin1_1xOfControlMaster: { value: se.ratio, met: se.ratio <= 1.1 },
    podExecWithin1_1xOfMinimalClient: { value: pe.ratio, met: pe.ratio <= 1.1 },
    warmRunWithin1_3xOfFloor: { value: f.ratio, met: f.ratio <= 1.3 },
  };
} finally {
  await down(cfg).catch((e: Error) => console.error(`down: ${e.message}`));
  rmSync(work, { recursive: true, force: true });
}
const file = join(dir, `${new Date().toISOString().slice(0, 10)}${ENTRY === 'tsx' ? '-tsx' : ''}.json`);
writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
console.log(JSON.stringify(result, null, 2));
console.log(`written to ${file}`);
