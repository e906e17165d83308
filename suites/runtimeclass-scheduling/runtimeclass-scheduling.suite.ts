import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { InfrastructureError } from '../../harness/errors.ts';
import { api, createRunNamespace, kubeConfig, privilegeOf, runPodToCompletion, testPod, unschedulableBySelector } from '../../harness/kube.ts';
import { until } from '../../harness/wait.ts';
import { NET_RAW_PROBE, parseNetRawProbe } from '../../harness/probes.ts';
import { SuiteContext, check, recordPod } from '../context.ts';
import { gardener, imageBuilder } from '../spec/index.ts';

// Through Kubernetes: a pod asking for the gVisor RuntimeClass lands only on the gVisor pool and
// runs under runsc; one without it runs under runc; one pinned elsewhere is not scheduled, and the
// scheduler's event says why. Everything runs in a namespace of its own, deleted afterwards.

const ctx = new SuiteContext('runtimeclass-scheduling');
afterAll(() => ctx.close());
const rc = ctx.gvisor.runtimeClassName;
const podTimeout = 120_000;
const expectedClass = gardener.runtimeClass(rc, ctx.gvisor.handler);
const bootLog = imageBuilder.sandboxBootLog;

describe('cluster', () => {
  const kubeconfig = ctx.plan.kubeconfig;
  if (ctx.lacking || !kubeconfig) {
    it.skip(ctx.lacking ?? 'needs a Kubernetes API, which this cluster does not offer', () => undefined);
    return;
  }
  const kc = kubeConfig(kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const ns = `gvisor-e2e-${ctx.plan.runId}`.toLowerCase().slice(0, 63);
  const gvisorNodes = ctx.gvisorNodes.map((n) => n.name);

  beforeAll(async () => {
    await createRunNamespace(core, ns, ctx.plan.runId);
  });
  afterAll(async () => {
    await api(`deleting namespace ${ns}`, () => core.deleteNamespace({ name: ns })).catch((e: Error) => console.error(e.message));
  });

  const pod = (name: string, command: string[], spec: Partial<k8s.V1PodSpec> = {}) => testPod({ name, namespace: ns, runId: ctx.plan.runId, image: ctx.plan.image.image, command }, spec);

  const record = (p: k8s.V1Pod) => recordPod({ pod: `${ns}/${p.metadata!.name}`, node: p.spec?.nodeName ?? '(scheduler)', handler: p.spec?.runtimeClassName ?? 'runc', privileged: privilegeOf(p.spec) });

  async function runToCompletion(p: k8s.V1Pod): Promise<{ pod: k8s.V1Pod; logs: string }> {
    await record(p);
    const r = await runPodToCompletion(kc, p, podTimeout);
    await ctx.attach(`logs of pod ${p.metadata!.name} (node ${r.pod.spec?.nodeName})`, r.logs);
    return r;
  }

  let gvisorPod: { pod: k8s.V1Pod; logs: string } | undefined;

  ctx.clusterTest(`a pod with runtimeClassName "${rc}" runs on a gVisor-pool node, under gVisor`, async () => {
    gvisorPod = await runToCompletion(pod('rc-gvisor', ['dmesg'], { runtimeClassName: rc }));
    const node = gvisorPod.pod.spec?.nodeName;
    check(node && gvisorNodes.includes(node), `the "${rc}" pod ran on ${node}, expected one of the gVisor pool's nodes (${gvisorNodes.join(', ')})`, gardener.gvisorOnPool);
    check(bootLog(gvisorPod.logs).starts, `the "${rc}" pod on ${node} did not print the gVisor boot log: ${gvisorPod.logs.trim().slice(0, 200)}`, bootLog);
  });

  ctx.clusterTest(`the RuntimeClass's node selector is merged into the pod`, async () => {
    // Admission merges it when the pod is created, whether or not the pod could then run: read the
    // pod back if the previous check's run did not complete (e.g. it landed where runsc is missing).
    const created = gvisorPod?.pod ?? (await api(`reading pod ${ns}/rc-gvisor`, () => core.readNamespacedPod({ name: 'rc-gvisor', namespace: ns })));
    const sel = created.spec?.nodeSelector ?? {};
    for (const [k, v] of Object.entries(expectedClass.scheduling.nodeSelector)) {
      check(sel[k] === v, `the "${rc}" pod's nodeSelector is ${JSON.stringify(sel)}, expected it to include ${k}: "${v}" from the RuntimeClass`, gardener.runtimeClass);
    }
  });

  ctx.clusterTest('a pod without a runtime class runs under runc', async () => {
    const r = await runToCompletion(pod('rc-none', ['dmesg']));
    check(!bootLog(r.logs).starts, `a pod without a runtime class on ${r.pod.spec?.nodeName} printed the gVisor boot log: the default runtime is gVisor`, bootLog);
  });

  /** Creates a pod and waits for the scheduler's first answer: the node it bound the pod to, or its FailedScheduling message. */
  async function schedulerAnswer(p: k8s.V1Pod): Promise<{ node?: string; why: string }> {
    const name = p.metadata!.name!;
    await record(p);
    await api(`creating pod ${ns}/${name}`, () => core.createNamespacedPod({ namespace: ns, body: p }), { created: true });
    let why = '';
    let node: string | undefined;
    await until(`a FailedScheduling event for pod ${ns}/${name}, or its scheduling`, 60_000, async () => {
      const list = await api(`listing events of pod ${ns}/${name}`, () => core.listNamespacedEvent({ namespace: ns, fieldSelector: `involvedObject.name=${name}` }));
      why = list.items.find((e) => e.reason === 'FailedScheduling')?.message ?? '';
      node = (await api(`reading pod ${ns}/${name}`, () => core.readNamespacedPod({ name, namespace: ns }))).spec?.nodeName;
      return Boolean(why || node);
    });
    return { node, why };
  }

  ctx.clusterTest('a gVisor pod pinned to a node outside the pool is not scheduled, and the event says why', async () => {
    // A registered node without the gVisor label (nodes outside the API, like systemd nodes, do not count).
    // One that takes ordinary pods is preferred (a kind or kubeadm control plane is tainted NoSchedule).
    const outside = (await api('listing nodes', () => core.listNode())).items.filter((x) => x.metadata?.labels?.[gardener.GVISOR_NODE_LABEL] !== 'true');
    const takesPods = (x: (typeof outside)[number]) => !x.spec?.unschedulable && !(x.spec?.taints ?? []).some((t) => t.effect === 'NoSchedule' || t.effect === 'NoExecute');
    const other = outside.find(takesPods) ?? outside[0];
    check(other, 'the cluster has no node outside the gVisor pools to pin to');
    const otherName = other.metadata!.name!;
    // Pinned as users pin: by the node's hostname label, whose value need not be the node's name.
    const hostname = other.metadata?.labels?.['kubernetes.io/hostname'];
    if (!hostname) throw new InfrastructureError(`node ${otherName} has no kubernetes.io/hostname label to pin a pod to`);
    const selector = { 'kubernetes.io/hostname': hostname };
    // The control: the same pod without the RuntimeClass must be bound there. Otherwise the node
    // takes no pods (cordoned, full, tainted) or the selector misses it, and a refusal of the gVisor
    // pod would prove nothing about the RuntimeClass.
    const control = await schedulerAnswer(pod('rc-pinned-control', ['true'], { nodeSelector: selector }));
    if (control.node !== otherName) {
      throw new InfrastructureError(`a pod without the RuntimeClass, pinned to ${otherName} (kubernetes.io/hostname=${hostname}), was not bound there (${control.node ? `bound to ${control.node}` : control.why}): the pinned check cannot tell why a gVisor pod is refused`);
    }
    const pinned = await schedulerAnswer(pod('rc-pinned', ['true'], { runtimeClassName: rc, nodeSelector: selector }));
    check(!pinned.node, `the pinned gVisor pod was scheduled onto ${pinned.node}, outside the gVisor pool`, gardener.runtimeClass);
    await ctx.attach('scheduler event', pinned.why);
    // Every node ruled out by the selector (the RuntimeClass's, merged into the pod) and by nothing
    // else: the control pod shows the pinned node itself would take the pod without it.
    if (!unschedulableBySelector(pinned.why)) throw new InfrastructureError(`the scheduler refused the pinned gVisor pod for a reason other than its node selector: ${pinned.why}`);
  });

  ctx.clusterTest(ctx.netRaw === 'true' ? 'net-raw at pod level: raw sockets work' : 'net-raw at pod level: raw sockets are refused', async () => {
    const r = await runToCompletion(pod('rc-netraw', NET_RAW_PROBE, { runtimeClassName: rc }));
    const p = parseNetRawProbe(r.logs);
    check(p.gvisor, `the net-raw pod on ${r.pod.spec?.nodeName} is not running under gVisor`);
    if (ctx.netRaw === 'true') check(p.pingExit === 0, `net-raw is "true" but ping failed in the pod on ${r.pod.spec?.nodeName}: ${r.logs.trim().slice(0, 200)}`, gardener.runscFlags);
    else check(p.pingExit !== 0 && p.refused, `net-raw is off but ping opened a raw socket in the pod on ${r.pod.spec?.nodeName}: ${r.logs.trim().slice(0, 200)}`, gardener.runscFlags);
  });
});
