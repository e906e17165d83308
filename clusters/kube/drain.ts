// Taking a node out of a cluster the harness runs, as `kubectl drain` then `kubectl delete node`
// do: cordon, evict its pods (waiting for the kubelet to stop them), delete the Node object.
// Source: kubectl's pkg/drain (cordon via spec.unschedulable, Eviction API, wait for deletion).
import type * as k8s from '@kubernetes/client-node';
import { log } from '../../harness/log.ts';
import { until } from '../../harness/wait.ts';

/** Drains and deletes `node`; pods the kubelet did not stop within timeoutMs are deleted by force, and said so. */
export async function drainAndDeleteNode(kubeconfig: string, node: string, timeoutMs: number): Promise<{ evicted: string[]; forced: string[] }> {
  const k8sLib = await import('@kubernetes/client-node');
  const { api, kubeConfig } = await import('../../harness/kube.ts');
  const core = kubeConfig(kubeconfig).makeApiClient(k8sLib.CoreV1Api);
  const exists = await api(`read node ${node}`, () => core.readNode({ name: node }).then(() => true, (e: { code?: number }) => (e.code === 404 ? false : Promise.reject(e))));
  if (!exists) return { evicted: [], forced: [] };
  await api(`cordon node ${node}`, () =>
    core.patchNode({ name: node, body: { spec: { unschedulable: true } } }, k8sLib.setHeaderOptions('Content-Type', k8sLib.PatchStrategy.MergePatch)),
  );
  const podsOn = async (): Promise<k8s.V1Pod[]> => (await api(`list pods on ${node}`, () => core.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${node}` }))).items;
  const evicted: string[] = [];
  for (const p of await podsOn()) {
    const id = `${p.metadata!.namespace}/${p.metadata!.name}`;
    await api(`evict pod ${id}`, () =>
      core
        .createNamespacedPodEviction({ name: p.metadata!.name!, namespace: p.metadata!.namespace!, body: { apiVersion: 'policy/v1', kind: 'Eviction', metadata: { name: p.metadata!.name, namespace: p.metadata!.namespace } } })
        .catch((e: { code?: number }) => (e.code === 404 ? undefined : Promise.reject(e))),
    );
    evicted.push(id);
  }
  let left: string[] = [];
  const forced: string[] = [];
  try {
    await until(() => `the pods on node ${node} to be gone after eviction (left: ${left.join(', ')})`, timeoutMs, async () => {
      left = (await podsOn()).map((p) => `${p.metadata!.namespace}/${p.metadata!.name}`);
      return left.length === 0;
    }, 1000);
  } catch {
    // The kubelet did not stop them (it may be gone): the objects go; `down` stops the sandboxes with the node's containerd.
    for (const id of left) {
      const [namespace, name] = id.split('/') as [string, string];
      await api(`delete pod ${id}`, () => core.deleteNamespacedPod({ name, namespace, gracePeriodSeconds: 0 }).catch((e: { code?: number }) => (e.code === 404 ? undefined : Promise.reject(e))));
      forced.push(id);
    }
    log('warn', `node ${node}: pods ${forced.join(', ')} were not stopped by the kubelet within ${Math.round(timeoutMs / 1000)}s and were deleted by force`);
  }
  await api(`delete node ${node}`, () => core.deleteNode({ name: node }).catch((e: { code?: number }) => (e.code === 404 ? undefined : Promise.reject(e))));
  return { evicted, forced };
}
