// lifecycle: gVisor removed from a pool and added back, as the extension's own integration test does; it changes the cluster, so it runs only when named.
import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { gvisorBinaries, type GVisorBinaries } from '../../harness/binaries.ts';
import { type Config } from '../../harness/config.ts';
import { InfrastructureError } from '../../harness/errors.ts';
import { installNode, type InstallResult } from '../../harness/installer.ts';
import { api, createRunNamespace, eventsOf, installKubernetesObjects, kubeConfig, privilegeOf, runPodToCompletion, testPod, watchPod } from '../../harness/kube.ts';
import { readNodeFile, sh } from '../../harness/node.ts';
import { until } from '../../harness/wait.ts';
import { SuiteContext, check, recordPod } from '../context.ts';
import { gardener, imageBuilder, lifecycle, runtimeTable, parseTomlFile } from '../spec/index.ts';

// One gVisor pool is taken out of gvisor.pools and the install converges on that (files, handler,
// node label), then the pool is put back and converges again. Between the steps the suite checks
// what the extension's test checks. A runc pod started before the removal must still be running
// after it (containerd restarts, its containers do not). The pool is always put back (afterAll).

const ctx = new SuiteContext('lifecycle');
afterAll(() => ctx.close());

describe('cluster', () => {
  const kubeconfig = ctx.plan.kubeconfig;
  if (ctx.lacking || !kubeconfig) {
    it.skip(ctx.lacking ?? 'needs a Kubernetes API, which this cluster does not offer', () => undefined);
    return;
  }
  const kc = kubeConfig(kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const ns = `gvisor-e2e-${ctx.plan.runId}-lifecycle`.toLowerCase().slice(0, 63).replace(/-+$/, '');
  const g = ctx.gvisor;
  const pool = g.pools[0]!;
  const poolNodes = ctx.gvisorNodes.filter((n) => n.pool === pool && n.access.type !== 'api');
  const without: Config = { ...ctx.config, gvisor: { ...g, pools: g.pools.filter((p) => p !== pool) } };
  const bins = gardener.binaries(g.binaryPath);
  const rc = g.runtimeClassName;
  const timeoutMs = 120_000;
  let binaries: GVisorBinaries | undefined;
  let removed = false;

  /** Converges the pool's nodes and the cluster's objects on `cfg`. */
  async function converge(cfg: Config): Promise<InstallResult[]> {
    binaries ??= await gvisorBinaries(g);
    const out: InstallResult[] = [];
    for (const n of poolNodes) out.push(await installNode(ctx.node(n), cfg, binaries));
    await installKubernetesObjects(kubeconfig!, cfg, ctx.nodes);
    return out;
  }

  beforeAll(async () => {
    if (poolNodes.length === 0) throw new InfrastructureError(`pool ${pool} has no node the harness can reach over SSH or locally: cannot remove gVisor from it`);
    await createRunNamespace(core, ns, ctx.plan.runId);
  });
  afterAll(async () => {
    // Whatever failed, the pool gets gVisor back: the cluster is left as the run found it.
    if (removed) await converge(ctx.config).catch((e: Error) => console.error(`putting gVisor back on pool ${pool}: ${e.message}`));
    await api(`deleting namespace ${ns}`, () => core.deleteNamespace({ name: ns })).catch((e: Error) => console.error(e.message));
  });

  const pod = (name: string, command: string[], spec: Partial<k8s.V1PodSpec> = {}) => testPod({ name, namespace: ns, runId: ctx.plan.runId, image: ctx.plan.image.image, command }, spec);
  const record = (p: k8s.V1Pod, node: string) => recordPod({ pod: `${ns}/${p.metadata!.name}`, node, handler: p.spec?.runtimeClassName ?? 'runc', privileged: privilegeOf(p.spec) });
  const node0 = poolNodes[0]?.name ?? '';
  let runcBefore: { uid: string; containerId: string } | undefined;

  /** What of gVisor is still on a node of the pool (empty: nothing). */
  async function leftovers(n: (typeof poolNodes)[number]): Promise<string[]> {
    const node = ctx.node(n);
    const found: string[] = [];
    for (const f of [bins.runsc, bins.shim, n.paths.runscConfig]) if ((await node.exec(`[ -e ${sh(f)} ]`)).code === 0) found.push(f);
    const text = await readNodeFile(node, n.paths.containerdConfig);
    const table = text === undefined ? undefined : runtimeTable(parseTomlFile(text, n.paths.containerdConfig, n.name), g.handler);
    if (table?.entry) found.push(`the "${g.handler}" runtime at [${table.path}] in ${n.paths.containerdConfig}`);
    const label = (await api(`reading node ${n.name}`, () => core.readNode({ name: n.name }))).metadata?.labels?.[gardener.GVISOR_NODE_LABEL];
    if (label !== undefined) found.push(`the node label ${gardener.GVISOR_NODE_LABEL}=${label}`);
    return found;
  }

  ctx.clusterTest(`gVisor removed from pool ${pool}: its nodes keep no runsc, shim, runsc.toml, handler or label`, async () => {
    // A runc pod that runs through the removal (pinned: the scheduler must not place it elsewhere).
    const runc = pod('lifecycle-runc', ['sleep', '3600'], { nodeName: node0 });
    await record(runc, node0);
    await api(`creating pod ${ns}/lifecycle-runc`, () => core.createNamespacedPod({ namespace: ns, body: runc }), { created: true });
    const running = await watchPod(kc, ns, 'lifecycle-runc', () => `pod ${ns}/lifecycle-runc to run on ${node0}`, timeoutMs, async (p) => p.status?.phase === 'Running');
    runcBefore = { uid: running.metadata!.uid!, containerId: running.status?.containerStatuses?.[0]?.containerID ?? '' };
    removed = true;
    await converge(without);
    for (const n of poolNodes) {
      const left = await leftovers(n);
      check(left.length === 0, `after gVisor was removed from pool ${pool}, ${n.name} still has ${left.join(', ')}`, lifecycle.removedFromPool);
    }
  });

  ctx.clusterTest(`with gVisor removed, gVisor pods do not schedule onto pool ${pool}`, async () => {
    const p = pod('lifecycle-gvisor-removed', ['true'], { runtimeClassName: rc });
    await record(p, '(scheduler)');
    await api(`creating pod ${ns}/${p.metadata!.name}`, () => core.createNamespacedPod({ namespace: ns, body: p }), { created: true });
    let bound: string | undefined;
    let why = '';
    await until(`the scheduler's answer for pod ${ns}/${p.metadata!.name}`, 60_000, async () => {
      bound = (await api(`reading pod ${ns}/${p.metadata!.name}`, () => core.readNamespacedPod({ name: p.metadata!.name!, namespace: ns }))).spec?.nodeName;
      why = (await eventsOf(core, ns, p.metadata!.name!)).find((e) => e.reason === 'FailedScheduling')?.message ?? '';
      return Boolean(bound || why);
    }, 1000);
    await ctx.attach('scheduler', bound ? `bound to ${bound}` : why);
    check(!bound || !poolNodes.some((n) => n.name === bound), `a "${rc}" pod was scheduled onto ${bound}, of pool ${pool}, after gVisor was removed from it`, lifecycle.removedFromPool);
  });

  ctx.clusterTest('a runc pod that was running keeps running through the removal', async () => {
    check(runcBefore, `pod ${ns}/lifecycle-runc never ran, so nothing can be said about it`);
    const now = await api(`reading pod ${ns}/lifecycle-runc`, () => core.readNamespacedPod({ name: 'lifecycle-runc', namespace: ns }));
    const st = now.status?.containerStatuses?.[0];
    check(
      now.metadata?.uid === runcBefore.uid && now.status?.phase === 'Running' && st?.containerID === runcBefore.containerId && (st?.restartCount ?? 0) === 0,
      `pod ${ns}/lifecycle-runc on ${node0} did not keep running through the removal: phase ${now.status?.phase}, container ${st?.containerID ?? '(none)'} (was ${runcBefore.containerId}), restarts ${st?.restartCount ?? 0}`,
      lifecycle.runcPodsKeepRunning,
    );
  });

  ctx.clusterTest(`gVisor added back to pool ${pool}: a "${rc}" pod runs there under gVisor again`, async () => {
    await converge(ctx.config);
    removed = false;
    for (const n of poolNodes) {
      const left = await leftovers(n);
      const missing = [bins.runsc, ...(g.shim === 'runsc' ? [bins.shim, n.paths.runscConfig] : [])].filter((f) => !left.includes(f));
      check(missing.length === 0 && left.some((x) => x.startsWith('the node label')), `after gVisor was added back to pool ${pool}, ${n.name} has only ${left.join(', ') || 'nothing of it'} (missing ${missing.join(', ') || 'the node label'})`, lifecycle.removedFromPool);
    }
    const p = pod('lifecycle-gvisor-back', ['dmesg'], { runtimeClassName: rc });
    await record(p, '(scheduler)');
    const r = await runPodToCompletion(kc, p, timeoutMs, g.handler);
    const boot = imageBuilder.sandboxBootLog(r.logs);
    check(poolNodes.some((n) => n.name === r.pod.spec?.nodeName) || g.pools.length > 1, `the "${rc}" pod ran on ${r.pod.spec?.nodeName}, expected pool ${pool}`, gardener.gvisorOnPool);
    check(boot.starts, `the "${rc}" pod on ${r.pod.spec?.nodeName} did not boot gVisor after it was added back: ${r.logs.trim().slice(0, 200)}`, imageBuilder.sandboxBootLog);
  });

  ctx.clusterTest('a second install with nothing changed changes and restarts nothing', async () => {
    const again = await converge(ctx.config);
    for (const r of again) {
      check(r.changed.length === 0 && !r.restarted, `installing again on ${r.node} with nothing changed ${r.restarted ? 'restarted containerd and ' : ''}changed ${r.changed.join(', ') || 'nothing'}`, lifecycle.idempotent);
    }
  });
});
