// What the install adds to a Kubernetes cluster the harness does not own (an existing cluster, the
// cluster of `vm` hosts): the RuntimeClass and the gVisor node label, only where missing, each
// recorded before it is made, and removed by down only while it is still what the harness made.
import type * as k8s from '@kubernetes/client-node';
import type { Config, NodeConfig } from '../../harness/config.ts';
import { InfrastructureError } from '../../harness/errors.ts';
import { log } from '../../harness/log.ts';

export interface ObjectsRecord {
  /** RuntimeClasses the harness created, by uid: a same-named object made by someone else later is left alone. */
  runtimeClasses: { name: string; uid: string }[];
  /** Node labels the harness added (removed on down only while they still have the value it set). */
  nodeLabels: { node: string; key: string; value: string }[];
}

export const CREATED_BY_ANNOTATION = 'gvisor-e2e.dev/created-by';

/** Adds what is missing (never replaces a RuntimeClass or changes a label that is there); `save` persists `rec` before each change. */
export async function addKubernetesObjects(kubeconfig: string, cfg: Config, nodes: NodeConfig[], rec: ObjectsRecord, save: () => void, createdBy: string): Promise<void> {
  const { installKubernetesObjects } = await import('../../harness/kube.ts');
  await installKubernetesObjects(kubeconfig, cfg, nodes, {
    annotations: { [CREATED_BY_ANNOTATION]: createdBy },
    labelling: (node, key, value) => {
      // Recorded before the label is set: `down` after a crash still knows to remove it.
      rec.nodeLabels.push({ node, key, value });
      save();
    },
    created: (rc) => {
      rec.runtimeClasses.push(rc);
      save();
    },
  });
}

/** Removes what `rec` says the harness made, each only while it is still that; `save` persists `rec` after each. */
export async function removeKubernetesObjects(kubeconfig: string, rec: ObjectsRecord, save: () => void): Promise<void> {
  if (!rec.runtimeClasses.length && !rec.nodeLabels.length) return;
  const [kube, k8sm] = await Promise.all([import('../../harness/kube.ts'), import('@kubernetes/client-node')]);
  const kc = kube.kubeConfig(kubeconfig);
  const core = kc.makeApiClient(k8sm.CoreV1Api);
  const nodeApi = kc.makeApiClient(k8sm.NodeV1Api);
  for (const rc of [...rec.runtimeClasses]) {
    // The uid precondition: a RuntimeClass someone re-created under the same name is not ours.
    await nodeApi.deleteRuntimeClass({ name: rc.name, body: { preconditions: { uid: rc.uid } } }).catch((e: { code?: number }) => {
      if (e.code === 409) log('warn', `RuntimeClass ${rc.name} was replaced by someone else since the harness created it; left as it is`);
      else if (e.code !== 404) throw new InfrastructureError(`deleting RuntimeClass ${rc.name}: ${(e as Error).message}`);
    });
    rec.runtimeClasses = rec.runtimeClasses.filter((x) => x !== rc);
    save();
    log('info', `deleted RuntimeClass ${rc.name}`);
  }
  const json = k8sm.setHeaderOptions('Content-Type', k8sm.PatchStrategy.JsonPatch);
  for (const l of [...rec.nodeLabels]) {
    const node: k8s.V1Node | undefined = await core.readNode({ name: l.node }).catch((e: { code?: number }) => (e.code === 404 ? undefined : Promise.reject(kube.apiError(`reading node ${l.node}`, e))));
    if (node?.metadata?.labels?.[l.key] === l.value) {
      // A JSON patch with a test op: the label goes only if it still has the value we set.
      const path = `/metadata/labels/${l.key.replace(/~/g, '~0').replace(/\//g, '~1')}`;
      await kube.api(`removing label ${l.key} from node ${l.node}`, () => core.patchNode({ name: l.node, body: [{ op: 'test', path, value: l.value }, { op: 'remove', path }] }, json));
      log('info', `removed label ${l.key} from node ${l.node}`);
    }
    rec.nodeLabels = rec.nodeLabels.filter((x) => x !== l);
    save();
  }
}
