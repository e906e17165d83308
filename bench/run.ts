import { execFileSync, spawnSync } from 'node:child_process';
import { cpus, loadavg, totalmem } from 'node:os';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { nodeConfig } from '../harness/config.ts';
import { parseConfig } from '../clusters/index.ts';
import { openNode } from '../harness/node.ts';
import { ROOT_DIR } from '../harness/paths.ts';
import type { RunSummary } from '../harness/report.ts';
import { down } from '../bin/app.ts';
import * as k8s from '@kubernetes/client-node';
import { createRunNamespace, execInPod, kubeConfig, testPod, watchPod } from '../harness/kube.ts';
import { buildTestImage } from '../harness/image.ts';
import { buildKubernetes } from '../clusters/kube/build.ts';
import { providerFor } from '../clusters/index.ts';

// Measures, on the machine it runs on: cold start (cluster up + install until the first suite,
// with cached binaries), the warm full run of all five suites, and the per-command overhead of
// the harness's SSH exec against plain `ssh`. Writes bench/results/<date>.json and prints a table.
// Targets are reported beside the numbers, never asserted.

const dir = join(ROOT_DIR, 'bench', 'results');
mkdirSync(dir, { recursive: true });
const work = execFileSync('mktemp', ['-d'], { encoding: 'utf8' }).trim();
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

function cli(args: string[]): { ms: number; code: number | null; stderr: string } {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT_DIR, 'bin/gvisor-e2e.ts'), '--config', cfgPath, ...args], { encoding: 'utf8', cwd: ROOT_DIR });
  return { ms: performance.now() - t0, code: r.status, stderr: r.stderr };
}

function summary(): RunSummary {
  return JSON.parse(readFileSync(join(work, 'reports', 'latest', 'summary.json'), 'utf8')) as RunSummary;
}

const result: Record<string, unknown> = {
  date: new Date().toISOString(),
  machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryGiB: +(totalmem() / 2 ** 30).toFixed(1), loadAverageAtStart: loadavg().map((x) => +x.toFixed(2)), kernel: execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim(), node: process.version },
};
try {
  // Cold start: up + install (binaries cached), until the suites could start.
  const upInstall = cli(['install']);
  if (upInstall.code !== 0) throw new Error(`install failed: ${upInstall.stderr.slice(-800)}`);
  result.coldStartSeconds = +(upInstall.ms / 1000).toFixed(1);

  // Warm full run: all five suites on the installed cluster, twice (the second is the number).
  cli(['run', '--keep', '--no-install']);
  const warm = cli(['run', '--keep', '--no-install']);
  const s = summary();
  result.warmRunSeconds = +(warm.ms / 1000).toFixed(1);
  result.warmRunState = s.state;
  result.suites = Object.fromEntries(s.suites.map((x) => [x.name, +(x.durationMs / 1000).toFixed(1)]));

  // Per-command overhead: `true` over the harness's reused SSH connection vs a fresh plain ssh.
  const local = JSON.parse(readFileSync(join(process.env.HOME ?? '/root', '.local/state/gvisor-e2e', name, 'state.json'), 'utf8')) as { nodes: { name: string; sshPort: number }[] };
  const stateDir = join(process.env.HOME ?? '/root', '.local/state/gvisor-e2e', name);
  const port = local.nodes[0]!.sshPort;
  const node = openNode(
    nodeConfig({
      name: 'gvisor-1',
      pool: 'gvisor',
      access: { type: 'ssh', host: '127.0.0.1', port, user: 'root', privateKeyPath: join(stateDir, 'ssh/id_ed25519'), knownHostsPath: join(stateDir, 'ssh/known_hosts') },
    }),
  );
  await node.exec('true');
  const N = 20;
  let t0 = performance.now();
  for (let i = 0; i < N; i++) await node.exec('true');
  const harnessMs = (performance.now() - t0) / N;
  t0 = performance.now();
  for (let i = 0; i < N; i++) {
    execFileSync('ssh', ['-i', join(stateDir, 'ssh/id_ed25519'), '-o', `UserKnownHostsFile=${join(stateDir, 'ssh/known_hosts')}`, '-o', 'StrictHostKeyChecking=yes', '-p', String(port), 'root@127.0.0.1', 'true']);
  }
  const sshMs = (performance.now() - t0) / N;
  await node.close();
  result.execOverhead = { harnessSshExecMs: +harnessMs.toFixed(1), plainSshMs: +sshMs.toFixed(1), ratio: +(harnessMs / sshMs).toFixed(2), note: 'harness reuses one SSH connection; plain ssh connects per command' };

  // Per-command overhead in a pod: the harness's exec (API exec subresource from this process) vs
  // `kubectl exec`, both running `true` in the same long-lived runc pod.
  const kubeconfig = providerFor(cfg).kubeconfig()!;
  const kc = kubeConfig(kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const ns = await createRunNamespace(core, `bench-exec-${process.pid}`, 'bench');
  try {
    const pod = testPod({ name: 'sleeper', namespace: ns, runId: 'bench', image: (await buildTestImage()).image, command: ['sleep', '3600'] }, { nodeName: 'plain-1' });
    await core.createNamespacedPod({ namespace: ns, body: pod });
    await watchPod(kc, ns, 'sleeper', () => `pod ${ns}/sleeper to run`, 120_000, async (p) => p.status?.phase === 'Running');
    await execInPod(kc, ns, 'sleeper', 'main', ['true']);
    t0 = performance.now();
    for (let i = 0; i < N; i++) {
      const r = await execInPod(kc, ns, 'sleeper', 'main', ['true']);
      if (r.code !== 0) throw new Error(`exec in pod exited ${r.code}: ${r.stderr}`);
    }
    const podMs = (performance.now() - t0) / N;
    const kubectl = (await buildKubernetes()).kubectl;
    t0 = performance.now();
    for (let i = 0; i < N; i++) execFileSync(kubectl, ['--kubeconfig', kubeconfig, 'exec', '-n', ns, 'sleeper', '--', 'true']);
    const kubectlMs = (performance.now() - t0) / N;
    result.podExecOverhead = { harnessPodExecMs: +podMs.toFixed(1), kubectlExecMs: +kubectlMs.toFixed(1), ratio: +(podMs / kubectlMs).toFixed(2), note: 'harness: one WebSocket per exec from a running process; kubectl: a process per exec' };
    result.targets = { warmFullRunUnder60s: (result.warmRunSeconds as number) < 60, execWithin1_2xOfSsh: harnessMs / sshMs <= 1.2, podExecWithin1_2xOfKubectl: podMs / kubectlMs <= 1.2 };
  } finally {
    await core.deleteNamespace({ name: ns }).catch(() => undefined);
  }
} finally {
  await down(cfg).catch(() => undefined);
}
const file = join(dir, `${new Date().toISOString().slice(0, 10)}.json`);
writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
console.log(JSON.stringify(result, null, 2));
console.log(`written to ${file}`);
