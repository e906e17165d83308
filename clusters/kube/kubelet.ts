import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { InfrastructureError } from '../../harness/errors.ts';
import { POOL_LABEL } from '../../harness/labels.ts';
import { until } from '../../harness/wait.ts';
import { shCommand } from '../../harness/shell.ts';
import type { ControlPlane } from './controlplane.ts';

// A real kubelet per host node, inside the node's namespaces, talking CRI to the node's containerd.
// The node's user namespace maps root to root; KubeletInUserNamespace makes the kubelet tolerate
// the few kernel knobs (oom_score_adj, some sysctls) such a namespace may not write.


/** What the kubelet needs of the node it runs on (a local provider's host node): a place for its files and a daemon slot. */
export interface KubeletHost {
  readonly stateDir: string;
  startDaemon(name: string, command: string): void;
  daemonAlive(name: string): boolean;
  logTail(name: string, lines?: number): string;
}

export interface KubeletOptions {
  name: string;
  ip: string;
  pool: string;
  kubeletBin: string;
}

export function kubeletConfig(caFile: string): object {
  return {
    apiVersion: 'kubelet.config.k8s.io/v1beta1',
    kind: 'KubeletConfiguration',
    authentication: { anonymous: { enabled: false }, webhook: { enabled: true }, x509: { clientCAFile: caFile } },
    authorization: { mode: 'Webhook' },
    cgroupDriver: 'cgroupfs',
    // This machine has cgroup v1 (hybrid); kubelet 1.35 refuses it unless told otherwise.
    failCgroupV1: false,
    cgroupsPerQOS: false,
    enforceNodeAllocatable: [],
    containerRuntimeEndpoint: 'unix:///run/containerd/containerd.sock',
    failSwapOn: false,
    featureGates: { KubeletInUserNamespace: true },
    localStorageCapacityIsolation: false,
    // No evictions: a busy CI disk must not evict the pods under test.
    evictionHard: { 'memory.available': '0%', 'nodefs.available': '0%', 'imagefs.available': '0%' },
    imageGCHighThresholdPercent: 100,
    imageGCLowThresholdPercent: 99,
    protectKernelDefaults: false,
    makeIPTablesUtilChains: false,
    serializeImagePulls: false,
    resolvConf: '',
    port: 10250,
    readOnlyPort: 0,
    healthzPort: 0,
    rotateCertificates: false,
    serverTLSBootstrap: false,
  };
}

export async function startKubelet(node: KubeletHost, cp: ControlPlane, o: KubeletOptions, timeoutMs = 90_000): Promise<void> {
  const dir = join(node.stateDir, 'kubelet');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, 'config.yaml'), stringify(kubeletConfig(cp.pki.ca.crt)));
  cp.kubeletKubeconfig(o.name, join(dir, 'kubeconfig'));
  node.startDaemon(
    'kubelet',
    // Every word quoted: the node and pool names come from the config or a customer's manifest.
    shCommand([o.kubeletBin, `--config=${join(dir, 'config.yaml')}`, `--kubeconfig=${join(dir, 'kubeconfig')}`, `--hostname-override=${o.name}`, `--node-ip=${o.ip}`, `--node-labels=${POOL_LABEL}=${o.pool}`, '--v=1']),
  );
  let last = '';
  await until(
    () => `node ${o.name} to register and become Ready (last: ${last}; kubelet log: ${node.logTail('kubelet')})`,
    timeoutMs,
    async () => {
      try {
        const [code, body] = await cp.get(`/api/v1/nodes/${o.name}`);
        if (code === 200) {
          const ready = (JSON.parse(body) as { status?: { conditions?: { type: string; status: string; message?: string }[] } }).status?.conditions?.find((c) => c.type === 'Ready');
          if (ready?.status === 'True') return true;
          last = `Ready=${ready?.status ?? 'unknown'}: ${ready?.message ?? ''}`;
        } else last = `HTTP ${code}`;
      } catch (e) {
        last = (e as Error).message;
      }
      if (!node.daemonAlive('kubelet')) throw new InfrastructureError(`kubelet on ${o.name} exited: ${node.logTail('kubelet', 3)}`);
      return false;
    },
  );
}
