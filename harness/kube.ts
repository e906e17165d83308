import * as k8s from '@kubernetes/client-node';
import type { Config, NodeConfig } from './config.ts';
import { InfrastructureError } from './errors.ts';
import { isGVisorNode } from './installer.ts';
import { registerSecret } from './redact.ts';

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

function apiError(what: string, e: unknown): InfrastructureError {
  const err = e as { code?: number; body?: unknown; message?: string };
  return new InfrastructureError(`${what}: ${err.code ? `HTTP ${err.code} ` : ''}${typeof err.body === 'string' ? err.body.slice(0, 300) : (err.message ?? String(e))}`);
}

/** Labels the gVisor pool's nodes and creates (or updates) the RuntimeClass. Idempotent. */
export async function installKubernetesObjects(kubeconfig: string, cfg: Config, nodes: NodeConfig[]): Promise<void> {
  const kc = kubeConfig(kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const nodeApi = kc.makeApiClient(k8s.NodeV1Api);
  const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
  for (const n of nodes) {
    const value = isGVisorNode(cfg, n) ? 'true' : null; // null removes the label from other pools
    try {
      await core.patchNode({ name: n.name, body: { metadata: { labels: { [GVISOR_NODE_LABEL]: value } } } }, merge);
    } catch (e) {
      throw apiError(`labelling node ${n.name}`, e);
    }
  }
  const rc = runtimeClass(cfg);
  try {
    await nodeApi.createRuntimeClass({ body: rc });
  } catch (e) {
    if ((e as { code?: number }).code !== 409) throw apiError(`creating RuntimeClass ${rc.metadata!.name}`, e);
    const current = await nodeApi.readRuntimeClass({ name: rc.metadata!.name! });
    await nodeApi.replaceRuntimeClass({ name: rc.metadata!.name!, body: { ...rc, metadata: { ...rc.metadata, resourceVersion: current.metadata?.resourceVersion } } });
  }
}
