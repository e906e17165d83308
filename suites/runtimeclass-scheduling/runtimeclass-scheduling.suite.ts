import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { durationMs } from '../../harness/config.ts';
import { InfrastructureError, TimeoutError } from '../../harness/errors.ts';
import { api, apiError, createRunNamespace, eventSummary, eventsOf, kubeConfig, privilegeOf, runPodToCompletion, testPod, unschedulableBySelector } from '../../harness/kube.ts';
import { until } from '../../harness/wait.ts';
import { NET_RAW_PROBE, parseNetRawProbe } from '../../harness/probes.ts';
import { SuiteContext, check, recordPod } from '../context.ts';
import { gardener, imageBuilder, kubernetes } from '../spec/index.ts';

// Through Kubernetes: a pod asking for the gVisor RuntimeClass lands only on the gVisor pool and
// runs under runsc; one without it runs under runc; one pinned elsewhere is not scheduled, and the
// scheduler's event says why. Everything runs in a namespace of its own, deleted afterwards.

const ctx = new SuiteContext('runtimeclass-scheduling');
afterAll(() => ctx.close());
const rc = ctx.gvisor.runtimeClassName;
// As long as a one-shot pod of the node-level suites may take (timeouts.container, twice: pull-free start and run).
const podTimeout = durationMs(ctx.config.timeouts.container) * 2;
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
  const nodeApi = kc.makeApiClient(k8s.NodeV1Api);
  const ns = `gvisor-e2e-${ctx.plan.runId}`.toLowerCase().slice(0, 63);
  const gvisorNodes = ctx.gvisorNodes.map((n) => n.name);

  beforeAll(async () => {
    await createRunNamespace(core, ns, ctx.plan.runId);
  });
  // A RuntimeClass of this run's own (cluster-scoped, so not removed with the namespace): deleted afterwards by uid.
  let probeClass: { name: string; uid: string } | undefined;
  afterAll(async () => {
    await api(`deleting namespace ${ns}`, () => core.deleteNamespace({ name: ns })).catch((e: Error) => console.error(e.message));
    if (probeClass) {
      const { name, uid } = probeClass;
      await api(`deleting RuntimeClass ${name}`, () => nodeApi.deleteRuntimeClass({ name, body: { preconditions: { uid } } })).catch((e: Error) => console.error(e.message));
    }
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

  /** Creates a pod the API server may refuse: the refusal (status and message), or undefined when it was admitted. */
  async function admission(p: k8s.V1Pod): Promise<{ code: number; message: string } | undefined> {
    await record(p);
    try {
      await core.createNamespacedPod({ namespace: ns, body: p });
      return undefined;
    } catch (e) {
      const code = (e as { code?: number }).code ?? 0;
      // A refusal is the cluster's answer; anything else (no connection, 5xx) learned nothing.
      if (code < 400 || code >= 500 || code === 429) throw apiError(`creating pod ${ns}/${p.metadata!.name}`, e);
      const body = (e as { body?: unknown }).body;
      const parsed = typeof body === 'string' ? (JSON.parse(body) as { message?: string }) : (body as { message?: string } | undefined);
      return { code, message: parsed?.message ?? String(body ?? (e as Error).message) };
    }
  }

  ctx.clusterTest('a pod naming a RuntimeClass that does not exist is refused at admission', async () => {
    const missing = `gvisor-e2e-missing-${ctx.plan.runId}`.toLowerCase().slice(0, 63).replace(/-+$/, '');
    const refused = await admission(pod('rc-missing', ['true'], { runtimeClassName: missing }));
    if (refused) await ctx.attach('admission', `${refused.code}: ${refused.message}`);
    const want = kubernetes.missingRuntimeClassRejected();
    check(refused, `a pod naming RuntimeClass "${missing}", which does not exist, was admitted: the RuntimeClass admission plugin is off`, kubernetes.missingRuntimeClassRejected);
    check(refused.code === want.status && refused.message.includes(missing), `a pod naming the missing RuntimeClass "${missing}" was refused with ${refused.code} "${refused.message}", expected ${want.status} naming the RuntimeClass`, kubernetes.missingRuntimeClassRejected);
  });

  const overhead = { cpu: '10m', memory: '1Mi' };
  ctx.clusterTest('a RuntimeClass whose handler no node serves: FailedCreatePodSandBox, and the pod never runs', async () => {
    const name = `gvisor-e2e-${ctx.plan.runId}-unserved`.toLowerCase().slice(0, 63).replace(/-+$/, '');
    const handler = 'gvisor-e2e-unserved';
    const made = await api(`creating RuntimeClass ${name}`, () => nodeApi.createRuntimeClass({ body: { metadata: { name, labels: { 'gvisor-e2e.dev/run-id': ctx.plan.runId } }, handler, overhead: { podFixed: overhead } } }), { created: true });
    probeClass = { name, uid: made?.metadata?.uid ?? (await api(`reading RuntimeClass ${name}`, () => nodeApi.readRuntimeClass({ name }))).metadata!.uid! };
    // Pinned to a gVisor-pool node: the node's runtime must refuse a handler it does not serve.
    const p = pod('rc-unserved', ['true'], { runtimeClassName: name, nodeName: gvisorNodes[0] });
    await record(p);
    await api(`creating pod ${ns}/rc-unserved`, () => core.createNamespacedPod({ namespace: ns, body: p }), { created: true });
    const want = kubernetes.unservedHandler();
    let events: k8s.CoreV1Event[] = [];
    let phase = '';
    // Waits for an event that names the handler: the kubelet retries the sandbox and posts the event
    // again, while one posted during an API outage (or one about something else) may be all there is
    // at first. Without one in time, the checks below fail with the events there are.
    await until(`a ${want.reason} event naming handler "${handler}" for pod ${ns}/rc-unserved`, 90_000, async () => {
      events = await eventsOf(core, ns, 'rc-unserved');
      phase = (await api(`reading pod ${ns}/rc-unserved`, () => core.readNamespacedPod({ name: 'rc-unserved', namespace: ns }))).status?.phase ?? '';
      return events.some((e) => e.reason === want.reason && e.message?.includes(handler)) || want.neverPhases.includes(phase);
    }, 1000).catch((e: Error) => {
      if (!(e instanceof TimeoutError)) throw e;
    });
    await ctx.attach('events of pod rc-unserved', eventSummary(events));
    check(!want.neverPhases.includes(phase), `pod ${ns}/rc-unserved of RuntimeClass "${name}" (handler "${handler}", which no node serves) reached phase ${phase} on ${gvisorNodes[0]}: the node ran it with some other runtime`, kubernetes.unservedHandler);
    const ev = events.find((e) => e.reason === want.reason && e.message?.includes(handler));
    check(ev, `pod ${ns}/rc-unserved (handler "${handler}") got no ${want.reason} event naming the handler (events: ${eventSummary(events)})`, kubernetes.unservedHandler);
  });

  ctx.clusterTest('RuntimeClass overhead is copied into the pod\'s spec.overhead', async () => {
    // The run's own RuntimeClass carries an overhead; the configured one too, if it has one.
    const probe = await api(`reading pod ${ns}/rc-unserved`, () => core.readNamespacedPod({ name: 'rc-unserved', namespace: ns }));
    const want = kubernetes.overheadCopied(overhead);
    check(JSON.stringify(probe.spec?.overhead ?? {}) === JSON.stringify(want), `pod ${ns}/rc-unserved has spec.overhead ${JSON.stringify(probe.spec?.overhead ?? {})}, expected ${JSON.stringify(want)} from its RuntimeClass`, kubernetes.overheadCopied);
    const cls = await api(`reading RuntimeClass ${rc}`, () => nodeApi.readRuntimeClass({ name: rc }));
    const created = gvisorPod?.pod ?? (await api(`reading pod ${ns}/rc-gvisor`, () => core.readNamespacedPod({ name: 'rc-gvisor', namespace: ns })));
    const wantRc = kubernetes.overheadCopied(cls.overhead?.podFixed);
    check(JSON.stringify(created.spec?.overhead ?? {}) === JSON.stringify(wantRc), `the "${rc}" pod has spec.overhead ${JSON.stringify(created.spec?.overhead ?? {})}, expected ${JSON.stringify(wantRc)} from RuntimeClass ${rc}`, kubernetes.overheadCopied);
  });

  ctx.clusterTest("the RuntimeClass's tolerations are merged into the pod and cover the gVisor pool's taints", async () => {
    const cls = await api(`reading RuntimeClass ${rc}`, () => nodeApi.readRuntimeClass({ name: rc }));
    const created = gvisorPod?.pod ?? (await api(`reading pod ${ns}/rc-gvisor`, () => core.readNamespacedPod({ name: 'rc-gvisor', namespace: ns })));
    const onPod = created.spec?.tolerations ?? [];
    const fromClass = cls.scheduling?.tolerations ?? [];
    const same = (a: k8s.V1Toleration, b: k8s.V1Toleration) => a.key === b.key && (a.operator ?? 'Equal') === (b.operator ?? 'Equal') && (a.value ?? '') === (b.value ?? '') && (a.effect ?? '') === (b.effect ?? '');
    const lost = fromClass.filter((t) => !onPod.some((p) => same(p, t)));
    check(lost.length === 0, `the "${rc}" pod lacks the RuntimeClass's tolerations ${JSON.stringify(lost)} (it has ${JSON.stringify(onPod)})`, kubernetes.tolerationsMerged);
    const { effects } = kubernetes.tolerationsMerged();
    const pool = (await api('listing nodes', () => core.listNode())).items.filter((x) => gvisorNodes.includes(x.metadata?.name ?? ''));
    for (const node of pool) {
      for (const taint of (node.spec?.taints ?? []).filter((x) => effects.includes(x.effect))) {
        const t = `${taint.key}${taint.value ? `=${taint.value}` : ''}:${taint.effect}`;
        check(onPod.some((x) => kubernetes.tolerates(x, taint)), `node ${node.metadata?.name} of the gVisor pool has taint ${t}, which the RuntimeClass "${rc}" does not tolerate (its tolerations: ${JSON.stringify(fromClass)}): gVisor pods cannot land there`, kubernetes.tolerationsMerged);
      }
    }
  });

  ctx.clusterTest("a pod whose nodeSelector conflicts with the RuntimeClass's is not scheduled, and the report says why", async () => {
    const [key, value] = Object.entries(expectedClass.scheduling.nodeSelector)[0]!;
    const conflicting = value === 'true' ? 'false' : 'true';
    const p = pod('rc-conflict', ['true'], { runtimeClassName: rc, nodeSelector: { [key]: conflicting } });
    const refused = await admission(p);
    if (refused) {
      await ctx.attach('admission', `${refused.code}: ${refused.message}`);
      check(refused.message.includes(kubernetes.conflictingSelectorRejected().says), `the pod with nodeSelector ${key}=${conflicting} was refused (${refused.code}) for another reason than the conflict: ${refused.message}`, kubernetes.conflictingSelectorRejected);
      return;
    }
    // Admitted: the RuntimeClass does not select ${key}=${value}; say where the pod went, or why it waits.
    let bound: string | undefined;
    let why = '';
    await until(`the scheduler's answer for pod ${ns}/rc-conflict`, 30_000, async () => {
      bound = (await api(`reading pod ${ns}/rc-conflict`, () => core.readNamespacedPod({ name: 'rc-conflict', namespace: ns }))).spec?.nodeName;
      why = (await eventsOf(core, ns, 'rc-conflict')).find((e) => e.reason === 'FailedScheduling')?.message ?? '';
      return Boolean(bound || why);
    }, 1000);
    check(false, `a pod with runtimeClassName "${rc}" and nodeSelector ${key}=${conflicting} was admitted (${bound ? `and scheduled onto ${bound}` : `scheduler: ${why}`}): RuntimeClass ${rc} does not select ${key}=${value}`, kubernetes.conflictingSelectorRejected);
  });

  ctx.clusterTest(ctx.netRaw === 'true' ? 'net-raw at pod level: raw sockets work' : 'net-raw at pod level: raw sockets are refused', async () => {
    const r = await runToCompletion(pod('rc-netraw', NET_RAW_PROBE, { runtimeClassName: rc }));
    const p = parseNetRawProbe(r.logs);
    check(p.gvisor, `the net-raw pod on ${r.pod.spec?.nodeName} is not running under gVisor`);
    if (ctx.netRaw === 'true') check(p.pingExit === 0, `net-raw is "true" but ping failed in the pod on ${r.pod.spec?.nodeName}: ${r.logs.trim().slice(0, 200)}`, gardener.runscFlags);
    else check(p.pingExit !== 0 && p.refused, `net-raw is off but ping opened a raw socket in the pod on ${r.pod.spec?.nodeName}: ${r.logs.trim().slice(0, 200)}`, gardener.runscFlags);
  });
});
