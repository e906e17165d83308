import { stringify } from 'yaml';
import type { Config } from '../../harness/config.ts';
import { GVISOR_NODE_LABEL, POOL_LABEL } from '../../harness/labels.ts';
import type { KindCluster } from './index.ts';
import { runtimeEntry, runtimesPath } from '../../harness/render.ts';
import { stringify as stringifyToml } from 'smol-toml';

// Pure rendering of kind's v1alpha4 cluster config (sigs.k8s.io/kind pkg/apis/config/v1alpha4):
// one control plane, then the workers of each pool in order. kind names workers by position
// (<name>-worker, <name>-worker2, …), so the same order tells which container is in which pool.

/** kind nodes carry Gardener's pool label, as the local provider's kubelets and a shoot's nodes do. */
export { POOL_LABEL };
/** The path inside kind node containers where containerd reads its config; kind nodes use config version 2. */
export const KIND_CONTAINERD_CONFIG_VERSION = 2;

export interface KindWorker {
  /** The node container's (and Kubernetes node's) name. */
  name: string;
  pool: string;
  gvisor: boolean;
}

/** The workers kind will make for these pools, with the names kind gives them. */
export function kindWorkers(spec: KindCluster, gvisorPools: string[]): KindWorker[] {
  let n = 0;
  return spec.pools.flatMap((p) =>
    Array.from({ length: p.nodes }, () => {
      n++;
      return { name: `${spec.name}-worker${n === 1 ? '' : n}`, pool: p.name, gvisor: gvisorPools.includes(p.name) };
    }),
  );
}

/**
 * The containerdConfigPatches entry registering the gVisor handler. kind applies a patch only when
 * its `version` matches the node's config.toml (version 2 on kind nodes), and applies it to EVERY
 * node: it has no per-node containerd patches.
 */
export function runscHandlerPatch(cfg: Config, runscConfigPath = '/etc/containerd/runsc.toml'): string {
  const g = cfg.gvisor;
  const path = [...runtimesPath(KIND_CONTAINERD_CONFIG_VERSION), g.handler];
  const doc: Record<string, unknown> = { version: KIND_CONTAINERD_CONFIG_VERSION };
  let cur = doc;
  for (const p of path.slice(0, -1)) cur = (cur[p] = {}) as Record<string, unknown>;
  cur[g.handler] = runtimeEntry({ handler: g.handler, binaryPath: g.binaryPath, shim: g.shim, runscConfigPath });
  return stringifyToml(doc);
}

/** What the provider learned before rendering: the image to boot, and facts of the Docker host. */
export interface KindRenderOptions {
  /** The node image reference (cluster.nodeImage, or the local image's reference for `local`). */
  image?: string;
  /**
   * The image is the harness's own local one (node-image.ts): no kindnetd and no kube-proxy image,
   * so kind must not install its default CNI (the provider lays pod networking, network.ts) and runs
   * without kube-proxy; kubeadm is told the etcd tag that image carries.
   */
  localImage?: { etcdTag: string };
  /** The Docker host is on cgroup v1: Kubernetes 1.35's kubelet refuses it unless failCgroupV1 is false. */
  cgroupV1?: boolean;
}

/** A containerdConfigPatches entry: runc with the cgroupfs driver (kind's config.toml sets SystemdCgroup = true). */
export function runcCgroupfsPatch(): string {
  const path = [...runtimesPath(KIND_CONTAINERD_CONFIG_VERSION), 'runc', 'options'];
  const doc: Record<string, unknown> = { version: KIND_CONTAINERD_CONFIG_VERSION };
  let cur = doc;
  for (const p of path) cur = (cur[p] = {}) as Record<string, unknown>;
  cur.SystemdCgroup = false;
  return stringifyToml(doc);
}

/** kind's v1alpha4 Cluster object for the config. */
export function kindConfig(cfg: Config & { cluster: KindCluster }, opts: KindRenderOptions = {}): Record<string, unknown> {
  const spec = cfg.cluster;
  const image = opts.image ?? spec.nodeImage;
  const workers = kindWorkers(spec, cfg.gvisor.pools);
  const mounts = spec.extraMounts.map((m) => ({ ...m }));
  const nodes: Record<string, unknown>[] = [{ role: 'control-plane', image }];
  for (const w of workers) {
    const pool = spec.pools.find((p) => p.name === w.pool)!;
    // The Gardener label is put on gVisor pools at creation (the RuntimeClass selects on it);
    // the installer sets it again through the API, idempotently.
    const labels: Record<string, string> = { ...pool.labels, [POOL_LABEL]: w.pool, ...(w.gvisor ? { [GVISOR_NODE_LABEL]: 'true' } : {}) };
    nodes.push({ role: 'worker', image, labels, ...(mounts.length ? { extraMounts: mounts } : {}) });
  }
  const out: Record<string, unknown> = { kind: 'Cluster', apiVersion: 'kind.x-k8s.io/v1alpha4', name: spec.name, nodes };
  // kind patches every node's containerd alike. Registering the handler that way is right only when
  // every worker is in a gVisor pool; otherwise nodes outside the pools must have none of it
  // (runsc-installation checks that), and the installer registers it per node instead.
  if (workers.every((w) => w.gvisor)) out.containerdConfigPatches = [runscHandlerPatch(cfg)];
  const networking: Record<string, unknown> = {};
  if (spec.apiServerAddress) networking.apiServerAddress = spec.apiServerAddress;
  if (spec.apiServerPort) networking.apiServerPort = spec.apiServerPort;
  const patches: string[] = [];
  if (opts.localImage) {
    networking.disableDefaultCNI = true;
    networking.kubeProxyMode = 'none';
    patches.push(stringify({ kind: 'ClusterConfiguration', etcd: { local: { imageTag: opts.localImage.etcdTag } } }));
  }
  // kind applies a patch to every document of its kind (init, join, kubelet config alike).
  if (opts.cgroupV1) {
    // On cgroup v1, kind's entrypoint bind-mounts /kubelet and /kubelet.slice under every controller, and
    // runsc cannot resolve a relative (systemd-style) cgroup parent through two such submounts
    // ("finding current cgroups: Rel: can't make ../system.slice/containerd.service relative to
    // /kubelet.slice", runsc/cgroup/cgroup.go loadPaths). With the cgroupfs driver kubelet hands out
    // absolute cgroup parents, which runsc uses as they are; runc's driver must match the kubelet's.
    patches.push(stringify({ kind: 'KubeletConfiguration', failCgroupV1: false, cgroupDriver: 'cgroupfs' }));
    out.containerdConfigPatches = [...((out.containerdConfigPatches as string[] | undefined) ?? []), runcCgroupfsPatch()];
  }
  patches.push(...spec.kubeadmConfigPatches);
  if (Object.keys(networking).length) out.networking = networking;
  if (patches.length) out.kubeadmConfigPatches = patches;
  return out;
}

export function renderKindConfig(cfg: Config & { cluster: KindCluster }, opts: KindRenderOptions = {}): string {
  return stringify(kindConfig(cfg, opts), { lineWidth: 0 });
}
