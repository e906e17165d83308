import * as k8s from '@kubernetes/client-node';
import type { Config, NodeConfig } from './config.ts';
import { InfrastructureError, TimeoutError } from './errors.ts';
import { isGVisorNode } from './installer.ts';
import { log } from './log.ts';
import { registerSecret } from './redact.ts';
import { MANAGED_LABEL, RUN_LABEL, SandboxStartError } from './sandbox.ts';
import { until } from './wait.ts';

// The Kubernetes side of installing gVisor, as gardener-extension-runtime-gvisor leaves it:
// RuntimeClass `gvisor` (handler `runsc`) whose scheduling.nodeSelector is the label Gardener puts
// on the worker pool's nodes, `containerruntime.worker.gardener.cloud/gvisor: "true"`
// (charts/internal/gvisor/templates/runtimeclass-gvisor.yaml).

export const GVISOR_NODE_LABEL = 'containerruntime.worker.gardener.cloud/gvisor';

export function kubeConfig(path: string): k8s.KubeConfig {
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(path);
  for (const u of kc.getUsers()) registerSecret(u.token);
  return kc;
}

export function runtimeClass(cfg: Config): k8s.V1RuntimeClass {
  return {
    apiVersion: 'node.k8s.io/v1',
    kind: 'RuntimeClass',
    metadata: { name: cfg.gvisor.runtimeClassName, labels: { 'app.kubernetes.io/managed-by': 'gvisor-e2e' } },
    handler: cfg.gvisor.handler,
    scheduling: { nodeSelector: { [GVISOR_NODE_LABEL]: 'true' } },
  };
}

/** An API error as one line: what we did, the HTTP code and the Status message (not the whole response). */
export function apiError(what: string, e: unknown): InfrastructureError {
  const err = e as { code?: number | string; body?: unknown; message?: string };
  let msg = err.message ?? String(e);
  if (typeof err.body === 'string') {
    try {
      msg = (JSON.parse(err.body) as { message?: string }).message ?? err.body;
    } catch {
      msg = err.body;
    }
  }
  // Only a number is an HTTP status; a string code (ECONNREFUSED) is already in the message.
  return new InfrastructureError(`${what}: ${typeof err.code === 'number' ? `HTTP ${err.code}: ` : ''}${msg.slice(0, 400)}`);
}

/**
 * The API server could not be reached or asked us to come back (it is restarting, or overloaded):
 * worth another try. Any other answer — 404, 409, 422, 403 — is final.
 */
export function isTransientApiError(e: unknown): boolean {
  const err = e as { code?: unknown; cause?: { code?: unknown }; message?: string };
  if (typeof err.code === 'number') return err.code === 429 || err.code === 502 || err.code === 503 || err.code === 504;
  const text = `${String(err.code ?? '')} ${String(err.cause?.code ?? '')} ${err.message ?? ''}`;
  return /ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|socket hang up|other side closed/i.test(text);
}

/** Backoff of API retries: 250 ms doubling to 4 s, for up to `API_RETRY_MS` in all. */
export const API_RETRY_MS = 45_000;

/**
 * Runs an API call, turning its failure into a one-line InfrastructureError that names the call.
 * Transient failures are retried with backoff. With `created`, a 409 after a retried attempt means
 * the earlier attempt did create the object before the connection dropped: that is success.
 */
export async function api<T>(what: string, call: () => Promise<T>, opts: { created?: boolean; retryMs?: number } = {}): Promise<T> {
  const deadline = Date.now() + (opts.retryMs ?? API_RETRY_MS);
  let delay = 250;
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (e) {
      if (opts.created && attempt > 1 && (e as { code?: unknown }).code === 409) return undefined as T;
      if (!isTransientApiError(e) || Date.now() + delay > deadline) {
        const err = apiError(what, e);
        if (attempt > 1) err.message += ` (after ${attempt} attempts)`;
        throw err;
      }
      log('warn', `${what}: ${(e as Error).message.slice(0, 200)}; retrying in ${delay}ms`);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 4000);
    }
  }
}

/** Labels the gVisor pool's nodes and creates (or updates) the RuntimeClass. Idempotent. */
export async function installKubernetesObjects(kubeconfig: string, cfg: Config, nodes: NodeConfig[]): Promise<void> {
  const kc = kubeConfig(kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const nodeApi = kc.makeApiClient(k8s.NodeV1Api);
  const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
  // Only nodes that joined the cluster (a local cluster's systemd nodes are node-level only).
  const registered = new Set((await api('listing nodes', () => core.listNode())).items.map((n) => n.metadata?.name));
  for (const n of nodes.filter((x) => registered.has(x.name))) {
    const value = isGVisorNode(cfg, n) ? 'true' : null; // null removes the label from other pools
    await api(`labelling node ${n.name}`, () => core.patchNode({ name: n.name, body: { metadata: { labels: { [GVISOR_NODE_LABEL]: value } } } }, merge));
  }
  const rc = runtimeClass(cfg);
  const name = rc.metadata!.name!;
  const current = await api(`reading RuntimeClass ${name}`, () => nodeApi.readRuntimeClass({ name }).catch((e: { code?: number }) => (e.code === 404 ? undefined : Promise.reject(e))));
  if (!current) await api(`creating RuntimeClass ${name}`, () => nodeApi.createRuntimeClass({ body: rc }), { created: true });
  else await api(`updating RuntimeClass ${name}`, () => nodeApi.replaceRuntimeClass({ name, body: { ...rc, metadata: { ...rc.metadata, resourceVersion: current.metadata?.resourceVersion } } }));
}


export interface PodRun {
  pod: k8s.V1Pod;
  logs: string;
  exitCode: number;
}

/** Events of one object, as "Reason: message | …" (what a failed wait reports). */
export async function eventsOf(core: k8s.CoreV1Api, ns: string, name: string): Promise<string> {
  const list = await core.listNamespacedEvent({ namespace: ns, fieldSelector: `involvedObject.name=${name}` }).catch(() => ({ items: [] as k8s.CoreV1Event[] }));
  return list.items.map((e) => `${e.reason}: ${e.message}`).join(' | ') || '(none)';
}

/** Creates a pod, waits for it to finish, returns it with its logs and exit code. */
export async function runPodToCompletion(core: k8s.CoreV1Api, p: k8s.V1Pod, timeoutMs: number, handler?: string): Promise<PodRun> {
  const ns = p.metadata!.namespace!;
  const name = p.metadata!.name!;
  await api(`creating pod ${ns}/${name}`, () => core.createNamespacedPod({ namespace: ns, body: p }), { created: true });
  let last: k8s.V1Pod | undefined;
  const t0 = Date.now();
  try {
    await until(`pod ${ns}/${name} to finish`, timeoutMs, async () => {
      last = await api(`reading pod ${ns}/${name}`, () => core.readNamespacedPod({ name, namespace: ns }));
      if (last.status?.phase === 'Pending' && last.spec?.nodeName && Date.now() - t0 > 3000) {
        // The runtime refused the sandbox (unknown handler, runsc missing…): the node's answer, at once.
        const list = await core.listNamespacedEvent({ namespace: ns, fieldSelector: `involvedObject.name=${name}` }).catch(() => ({ items: [] as k8s.CoreV1Event[] }));
        const refused = list.items.find((e) => e.reason === 'FailedCreatePodSandBox');
        // The handler when the caller knows it (the RuntimeClass name may differ from it).
        if (refused) throw new SandboxStartError(handler ?? p.spec?.runtimeClassName ?? 'runc', last.spec.nodeName, refused.message ?? '');
      }
      const sched = last.status?.conditions?.find((c) => c.type === 'PodScheduled');
      if (!last.spec?.nodeName && sched?.status === 'False' && sched.reason === 'Unschedulable' && Date.now() - t0 > 5000) {
        throw new UnschedulableError(`pod ${ns}/${name} cannot be scheduled: ${sched.message ?? ''}`);
      }
      return last.status?.phase === 'Succeeded' || last.status?.phase === 'Failed';
    });
  } catch (e) {
    if (!(e instanceof TimeoutError)) throw e;
    throw new TimeoutError(`pod ${ns}/${name} to finish (events: ${await eventsOf(core, ns, name)})`, timeoutMs);
  }
  const logs = await api(`reading logs of pod ${ns}/${name}`, () => core.readNamespacedPodLog({ name, namespace: ns, container: 'main' }));
  const exitCode = last?.status?.containerStatuses?.[0]?.state?.terminated?.exitCode ?? -1;
  return { pod: last!, logs, exitCode };
}

/** The scheduler refuses a pod: the cluster's answer (labels, RuntimeClass), not an infrastructure fault. */
export class UnschedulableError extends Error {
  override readonly name = 'UnschedulableError';
}

/** A run's namespace, labelled with the run id (for cleanup), ready once its default ServiceAccount exists. */
export async function createRunNamespace(core: k8s.CoreV1Api, name: string, runId: string): Promise<string> {
  await api(`creating namespace ${name}`, () => core.createNamespace({ body: { metadata: { name, labels: { [RUN_LABEL]: runId, [MANAGED_LABEL]: 'true' } } } }), { created: true });
  // Pods need the namespace's default ServiceAccount, which the controller-manager creates.
  await until(`ServiceAccount default in namespace ${name}`, 60_000, () => core.readNamespacedServiceAccount({ name: 'default', namespace: name }).then(() => true, () => false));
  return name;
}

/** A one-container, run-once, least-privilege test pod with the busybox test image. */
export function testPod(o: { name: string; namespace: string; runId: string; image: string; command: string[] }, spec: Partial<k8s.V1PodSpec> = {}): k8s.V1Pod {
  return {
    metadata: { name: o.name, namespace: o.namespace, labels: { [RUN_LABEL]: o.runId } },
    spec: {
      restartPolicy: 'Never',
      automountServiceAccountToken: false,
      terminationGracePeriodSeconds: 1,
      // No capabilities are dropped: the net-raw check must see what the runtime grants by default.
      containers: [{ name: 'main', image: o.image, imagePullPolicy: 'Never', command: o.command, securityContext: { privileged: false, allowPrivilegeEscalation: false } }],
      ...spec,
    },
  };
}

/**
 * What makes a pod more than least privilege, one reason per item ([] = none): the report names
 * every pod with a reason, so a suite that needs one says so in the open.
 */
export function privilegeOf(spec: k8s.V1PodSpec | undefined): string[] {
  if (!spec) return [];
  const why: string[] = [];
  if (spec.hostNetwork) why.push('hostNetwork');
  if (spec.hostPID) why.push('hostPID');
  if (spec.hostIPC) why.push('hostIPC');
  if (spec.automountServiceAccountToken !== false) why.push('mounts a ServiceAccount token');
  for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
    const sc = c.securityContext;
    if (sc?.privileged) why.push(`container ${c.name}: privileged`);
    if (sc?.allowPrivilegeEscalation !== false) why.push(`container ${c.name}: allows privilege escalation`);
    if (sc?.capabilities?.add?.length) why.push(`container ${c.name}: adds capabilities ${sc.capabilities.add.join(', ')}`);
  }
  for (const v of spec.volumes ?? []) if (v.hostPath) why.push(`volume ${v.name}: hostPath ${v.hostPath.path}`);
  return why;
}
