// Label names the harness shares with Gardener (kept apart from kube.ts, so that reading a constant
// does not load the Kubernetes client).

/**
 * The label gardener-extension-runtime-gvisor's RuntimeClass selects on
 * (charts/internal/gvisor/templates/runtimeclass-gvisor.yaml), set on the gVisor pool's nodes.
 */
export const GVISOR_NODE_LABEL = 'containerruntime.worker.gardener.cloud/gvisor';
/** Gardener's worker pool label: every provider labels (or finds) a pool's nodes by it. */
export const POOL_LABEL = 'worker.gardener.cloud/pool';
