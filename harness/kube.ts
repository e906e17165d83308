import * as k8s from '@kubernetes/client-node';
import { Writable } from 'node:stream';
import type { Config, NodeConfig } from './config.ts';
import { InfrastructureError, TimeoutError } from './errors.ts';
import { criInfrastructureFault } from './faults.ts';
import { isGVisorNode } from './installer.ts';
import { log } from './log.ts';
import { registerSecret } from './redact.ts';
import { MANAGED_LABEL, RUN_LABEL, SandboxStartError } from './sandbox.ts';
import { until, untilWoken } from './wait.ts';
import { exponential, retry, withAttempts } from './retry.ts';

// The Kubernetes side of installing gVisor, as gardener-extension-runtime-gvisor leaves it:
// RuntimeClass `gvisor` (handler `runsc`) whose scheduling.nodeSelector is the label Gardener puts
// on the worker pool's nodes, `containerruntime.worker.gardener.cloud/gvisor: "true"`
// (charts/internal/gvisor/templates/runtimeclass-gvisor.yaml).

import { GVISOR_NODE_LABEL } from './labels.ts';
export { GVISOR_NODE_LABEL, POOL_LABEL } from './labels.ts';

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
  return retry(
    async (attempt) => {
      try {
        return await call();
      } catch (e) {
        if (opts.created && attempt > 1 && (e as { code?: unknown }).code === 409) return undefined as T;
        throw e;
      }
    },
    {
      what,
      backoff: exponential({ initialMs: 250, maxMs: 4000, totalMs: opts.retryMs ?? API_RETRY_MS }),
      retryable: isTransientApiError,
      giveUp: (e, attempts) => withAttempts(apiError(what, e), attempts),
    },
  );
}

/** Labels the gVisor pool's nodes and creates (or updates) the RuntimeClass. Idempotent. */
/** On a cluster the harness does not own, what it adds is reported here (so `down` removes exactly that). */
export interface AddOnly {
  /** Annotations for objects it creates. */
  annotations: Record<string, string>;
  /** Called before the label is set. */
  labelling(node: string, key: string, value: string): void;
  created(runtimeClass: { name: string; uid: string }): void;
}

/**
 * The RuntimeClass and the gVisor node label, as the extension leaves them. On a cluster the
 * harness owns, they converge on the config (the label removed from other pools, the RuntimeClass
 * replaced). With `addOnly`, only what is missing is created, and what exists is tested as it is.
 */
export async function installKubernetesObjects(kubeconfig: string, cfg: Config, nodes: NodeConfig[], addOnly?: AddOnly): Promise<void> {
  const kc = kubeConfig(kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const nodeApi = kc.makeApiClient(k8s.NodeV1Api);
  const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
  // Only nodes that joined the cluster (a local cluster's systemd nodes are node-level only).
  const registered = new Map((await api('listing nodes', () => core.listNode())).items.map((n) => [n.metadata?.name, n] as const));
  for (const n of nodes.filter((x) => registered.has(x.name))) {
    const gvisor = isGVisorNode(cfg, n);
    if (addOnly) {
      if (!gvisor) continue;
      const have = registered.get(n.name)?.metadata?.labels?.[GVISOR_NODE_LABEL];
      if (have === 'true') continue;
      if (have !== undefined) {
        log('warn', `node ${n.name} has ${GVISOR_NODE_LABEL}=${have}; left as it is (the harness changes only what it added)`);
        continue;
      }
      addOnly.labelling(n.name, GVISOR_NODE_LABEL, 'true');
    }
    const value = gvisor ? 'true' : null; // null removes the label from other pools
    await api(`labelling node ${n.name}`, () => core.patchNode({ name: n.name, body: { metadata: { labels: { [GVISOR_NODE_LABEL]: value } } } }, merge));
    if (addOnly) log('info', `labelled node ${n.name} ${GVISOR_NODE_LABEL}=true (removed again by down)`);
  }
  const rc = runtimeClass(cfg);
  const name = rc.metadata!.name!;
  const current = await api(`reading RuntimeClass ${name}`, () => nodeApi.readRuntimeClass({ name }).catch((e: { code?: number }) => (e.code === 404 ? undefined : Promise.reject(e))));
  if (current && addOnly) {
    if (current.handler !== rc.handler) log('warn', `RuntimeClass ${name} exists with handler "${current.handler}" (config: "${rc.handler}"); left as it is`);
  } else if (current && current.handler !== rc.handler) {
    // The handler is immutable (node.k8s.io validation): on the harness's own cluster the object is made again.
    log('info', `RuntimeClass ${name}: handler "${current.handler}" → "${rc.handler}" (replaced: the handler field is immutable)`);
    await api(`deleting RuntimeClass ${name}`, () => nodeApi.deleteRuntimeClass({ name }).catch((e: { code?: number }) => (e.code === 404 ? undefined : Promise.reject(e))));
    await api(`creating RuntimeClass ${name}`, () => nodeApi.createRuntimeClass({ body: rc }), { created: true });
  } else if (current) {
    await api(`updating RuntimeClass ${name}`, () => nodeApi.replaceRuntimeClass({ name, body: { ...rc, metadata: { ...rc.metadata, resourceVersion: current.metadata?.resourceVersion } } }));
  } else {
    if (addOnly) rc.metadata!.annotations = { ...addOnly.annotations };
    // A create that went through before a retry answers 409: read back what it made.
    const made = (await api(`creating RuntimeClass ${name}`, () => nodeApi.createRuntimeClass({ body: rc }), { created: true })) ?? (await api(`reading RuntimeClass ${name}`, () => nodeApi.readRuntimeClass({ name })));
    if (addOnly) {
      addOnly.created({ name, uid: made.metadata!.uid! });
      log('info', `created RuntimeClass ${name} (removed again by down)`);
    }
  }
}


export interface PodRun {
  pod: k8s.V1Pod;
  logs: string;
  exitCode: number;
}

/** Events of one object; none when they cannot be listed (they only explain, never decide, a failure). */
export async function eventsOf(core: k8s.CoreV1Api, ns: string, name: string): Promise<k8s.CoreV1Event[]> {
  const list = await core.listNamespacedEvent({ namespace: ns, fieldSelector: `involvedObject.name=${name}` }).catch(() => ({ items: [] as k8s.CoreV1Event[] }));
  return list.items;
}

/** Events as "Reason: message | …" (what a failed wait reports). */
export function eventSummary(events: k8s.CoreV1Event[]): string {
  return events.map((e) => `${e.reason}: ${e.message}`).join(' | ') || '(none)';
}

/**
 * Follows one pod with a watch until decide() says it is done (or throws to give up). decide() is
 * also re-run every `tickMs` on the last state seen, for conditions that depend on time or on
 * other objects (events). A watch the server closes is re-opened; the wait ends at `timeoutMs`.
 */
export function watchPod(kc: k8s.KubeConfig, ns: string, name: string, what: () => string, timeoutMs: number, decide: (pod: k8s.V1Pod) => Promise<boolean>, tickMs = 1000): Promise<k8s.V1Pod> {
  let last: k8s.V1Pod | undefined;
  const done = async () => {
    const pod = last;
    return pod && (await decide(pod)) ? pod : undefined;
  };
  return untilWoken(what, timeoutMs, done, {
    tickMs,
    events: (wake) => {
      let stopped = false;
      let controller: AbortController | undefined;
      const open = () => {
        new k8s.Watch(kc)
          .watch(
            `/api/v1/namespaces/${ns}/pods`,
            { fieldSelector: `metadata.name=${name}` },
            (type, obj: k8s.V1Pod) => {
              if (type === 'ADDED' || type === 'MODIFIED') {
                last = obj;
                wake();
              }
            },
            () => {
              // Closed by the server (its watch timeout) or by a broken connection: open it again.
              if (!stopped) setTimeout(() => !stopped && open(), 200);
            },
          )
          .then(
            (c) => (stopped ? c.abort() : (controller = c)),
            () => !stopped && setTimeout(() => !stopped && open(), 500),
          );
      };
      open();
      return () => {
        stopped = true;
        controller?.abort();
      };
    },
  });
}

/** Creates a pod, waits (by watching it) for it to finish, returns it with its logs and exit code. */
export async function runPodToCompletion(kc: k8s.KubeConfig, p: k8s.V1Pod, timeoutMs: number, handler?: string): Promise<PodRun> {
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const ns = p.metadata!.namespace!;
  const name = p.metadata!.name!;
  await api(`creating pod ${ns}/${name}`, () => core.createNamespacedPod({ namespace: ns, body: p }), { created: true });
  const t0 = Date.now();
  let last: k8s.V1Pod;
  try {
    last = await watchPod(kc, ns, name, () => `pod ${ns}/${name} to finish`, timeoutMs, async (pod) => {
      if (pod.status?.phase === 'Pending' && pod.spec?.nodeName) {
        // The runtime refused the sandbox (unknown handler, runsc missing…): the node's answer once
        // the kubelet's retry failed too (a first failure may be a restarting containerd); a refusal
        // for lack of room or of an image is the infrastructure's.
        const refused = sandboxRefusal(await eventsOf(core, ns, name));
        if (refused?.infrastructure) throw new InfrastructureError(`pod ${ns}/${name} on ${pod.spec.nodeName}: the sandbox could not be created: ${refused.message}`);
        // The handler when the caller knows it (the RuntimeClass name may differ from it).
        if (refused) throw new SandboxStartError(handler ?? p.spec?.runtimeClassName ?? 'runc', pod.spec.nodeName, refused.message);
      }
      const sched = pod.status?.conditions?.find((c) => c.type === 'PodScheduled');
      // Only a node selector/affinity that no node matches is the cluster's answer (labels, the
      // RuntimeClass); lack of CPU or memory, taints of a not-ready node: keep waiting, and a
      // timeout is broken.
      if (!pod.spec?.nodeName && sched?.status === 'False' && sched.reason === 'Unschedulable' && Date.now() - t0 > 5000 && unschedulableBySelector(sched.message ?? '')) {
        throw new UnschedulableError(`pod ${ns}/${name} cannot be scheduled: ${sched.message ?? ''}`);
      }
      return pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed';
    });
  } catch (e) {
    if (!(e instanceof TimeoutError)) throw e;
    throw new TimeoutError(`pod ${ns}/${name} to finish (events: ${eventSummary(await eventsOf(core, ns, name))})`, timeoutMs);
  }
  const logs = await api(`reading logs of pod ${ns}/${name}`, () => core.readNamespacedPodLog({ name, namespace: ns, container: 'main' }));
  const exitCode = last.status?.containerStatuses?.[0]?.state?.terminated?.exitCode ?? -1;
  return { pod: last, logs, exitCode };
}

/**
 * A pod's FailedCreatePodSandBox, once it is a verdict: after the kubelet's retry failed too (the
 * event's count, or two events), or at once when it says the node lacks room or an image.
 */
export function sandboxRefusal(events: Pick<k8s.CoreV1Event, 'reason' | 'message' | 'count'>[]): { message: string; infrastructure: boolean } | undefined {
  const refused = events.filter((e) => e.reason === 'FailedCreatePodSandBox');
  if (refused.length === 0) return undefined;
  const message = refused.at(-1)!.message ?? '';
  if (criInfrastructureFault({ message })) return { message, infrastructure: true };
  const times = refused.reduce((n, e) => n + (e.count ?? 1), 0);
  return times >= 2 ? { message, infrastructure: false } : undefined;
}

/**
 * Whether the scheduler's message says every node was ruled out by the pod's node selector or
 * affinity ("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."), the
 * one refusal that is the cluster's answer about labels and RuntimeClasses.
 */
export function unschedulableBySelector(message: string): boolean {
  const m = /(\d+)\/(\d+) nodes are available: ([^.]*)/.exec(message);
  if (!m) return false;
  const total = Number(m[2]);
  let bySelector = 0;
  let byTaint = 0;
  for (const part of m[3]!.split(',')) {
    const p = /^\s*(\d+) (.*)$/.exec(part);
    if (p && /didn't match Pod's node affinity\/selector/.test(p[2]!)) bySelector += Number(p[1]);
    // A tainted node (a kubeadm control plane) is reported by its taint, the first filter it fails:
    // it is not the node a caller pinned to (a pod without the RuntimeClass landed there).
    else if (p && /had untolerated taint/.test(p[2]!)) byTaint += Number(p[1]);
  }
  return total > 0 && bySelector > 0 && bySelector + byTaint === total;
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
 * Runs a command in a running pod's container through the API's exec subresource (what `kubectl
 * exec` does, over one WebSocket per command from this process). Used for checks that must look
 * from inside a long-lived pod, and by the benchmark that compares it with `kubectl exec`.
 */
export async function execInPod(kc: k8s.KubeConfig, ns: string, pod: string, container: string, command: string[], timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const sink = (f: (s: string) => void) => new Writable({ write: (chunk: Buffer, _enc, cb) => (f(chunk.toString()), cb()) });
  return new Promise((resolve, reject) => {
    let code = -1;
    const timer = setTimeout(() => reject(new TimeoutError(`exec of "${command.join(' ')}" in pod ${ns}/${pod}`, timeoutMs)), timeoutMs);
    new k8s.Exec(kc)
      .exec(ns, pod, container, command, sink((s) => (stdout += s)), sink((s) => (stderr += s)), null, false, (status) => {
        // Success has no details; a non-zero exit is a Failure whose causes carry ExitCode.
        code = status.status === 'Success' ? 0 : Number(status.details?.causes?.find((c) => c.reason === 'ExitCode')?.message ?? -1);
      })
      .then(
        (ws) => {
          // The socket closes after the last output and the status frame.
          ws.on('close', () => (clearTimeout(timer), resolve({ code, stdout, stderr })));
          ws.on('error', (e: Error) => (clearTimeout(timer), reject(apiError(`exec in pod ${ns}/${pod}`, e))));
        },
        (e: unknown) => (clearTimeout(timer), reject(apiError(`exec in pod ${ns}/${pod}`, e))),
      );
  });
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
