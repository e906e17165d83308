// A kubelet joined to the harness's control plane from a host reached over SSH (a VM), the way
// kubeadm's `join` does it: TLS bootstrap with a short-lived token, then a client certificate of
// the node's own that the kubelet renews itself. Everything it puts on the host is journaled
// before it is made; `leaveKubelet` stops it and removes exactly that, including what the kubelet
// itself made (its certificates, pod volumes, logs) and the kernel settings it changed.
import { stringify } from 'yaml';
import { InfrastructureError } from '../../harness/errors.ts';
import { NodeJournal } from '../../harness/journal.ts';
import { POOL_LABEL } from '../../harness/labels.ts';
import { absentOnNode, mustExec, type NodeAccess, removeTreeOnNode, sh } from '../../harness/node.ts';

export const KUBELET_DIR = '/var/lib/gvisor-e2e/kubelet';
export const KUBELET_UNIT_NAME = 'gvisor-e2e-kubelet.service';
export const KUBELET_UNIT = `/etc/systemd/system/${KUBELET_UNIT_NAME}`;
const JOIN_STATE = '/var/lib/gvisor-e2e/kubelet.json';
const BACKUP_SUFFIX = '.gvisor-e2e-kubelet.orig';
const BOOTSTRAP_KUBECONFIG = `${KUBELET_DIR}/bootstrap-kubeconfig`;
/** What the kubelet makes at run time (certificates, kubeconfig, pods' volumes and logs): removed as a tree on leave. */
const KUBELET_MADE = ['pki', 'kubeconfig', 'root', 'pod-logs', 'volume-plugins'].map((d) => `${KUBELET_DIR}/${d}`);
/** The kubelet writes these at start when protectKernelDefaults is off (pkg/kubelet/cm/container_manager_linux.go, setupKernelTunables). */
export const KUBELET_SYSCTLS = ['vm/overcommit_memory', 'vm/panic_on_oom', 'kernel/panic', 'kernel/panic_on_oops', 'kernel/keys/root_maxkeys', 'kernel/keys/root_maxbytes'];
/**
 * Paths the kubelet makes whatever its flags say: /var/log/containers (kuberuntime ContainerLogsDir)
 * and the device-plugin socket dir /var/lib/kubelet/device-plugins (deviceplugin/v1beta1
 * DevicePluginPath). Those that were not there before the join are removed on leave.
 */
export const KUBELET_FIXED_PATHS = ['/var/log/containers', '/var/lib/kubelet'];

interface JoinFacts {
  /** Kernel settings before the kubelet first ran, restored on leave. */
  sysctls: Record<string, string>;
  /** Of KUBELET_FIXED_PATHS, those absent before the kubelet first ran. */
  absentBefore: string[];
  started: boolean;
}

export interface JoinOptions {
  name: string;
  pool: string;
  /** The address the API server reaches the kubelet at (an address of the host itself). */
  nodeIP: string;
  server: string;
  caPem: string;
  kubelet: Buffer;
  /** The containerd of the node: its socket and the cgroup driver its runc uses. */
  containerdSocket: string;
  cgroupDriver: 'cgroupfs' | 'systemd';
  /** A bootstrap kubeconfig (token inside), asked for only when the kubelet has no certificate yet. */
  bootstrapKubeconfig: () => Promise<string>;
  /** The control plane is a new one (new CA): a certificate the kubelet holds is of no use and goes. */
  freshControlPlane: boolean;
}

/** The kubelet's configuration on a joined host: a real node's defaults, evictions off, files in KUBELET_DIR. */
export function joinedKubeletConfig(o: { cgroupDriver: 'cgroupfs' | 'systemd'; containerdSocket: string }): object {
  return {
    apiVersion: 'kubelet.config.k8s.io/v1beta1',
    kind: 'KubeletConfiguration',
    authentication: { anonymous: { enabled: false }, webhook: { enabled: true }, x509: { clientCAFile: `${KUBELET_DIR}/ca.crt` } },
    authorization: { mode: 'Webhook' },
    cgroupDriver: o.cgroupDriver,
    // No QoS cgroup tree: pods' cgroups come and go with them, so leaving takes no cgroup with it.
    cgroupsPerQOS: false,
    enforceNodeAllocatable: [],
    containerRuntimeEndpoint: `unix://${o.containerdSocket}`,
    failSwapOn: false,
    evictionHard: { 'memory.available': '0%', 'nodefs.available': '0%', 'imagefs.available': '0%' },
    imageGCHighThresholdPercent: 100,
    imageGCLowThresholdPercent: 99,
    makeIPTablesUtilChains: false,
    serializeImagePulls: false,
    resolvConf: '',
    podLogsDir: `${KUBELET_DIR}/pod-logs`,
    volumePluginDir: `${KUBELET_DIR}/volume-plugins`,
    port: 10250,
    readOnlyPort: 0,
    // The client certificate from the bootstrap is renewed by the kubelet (approved as selfnodeclient).
    rotateCertificates: true,
    serverTLSBootstrap: false,
  };
}

/**
 * An ExecStart= command line: each word double-quoted with systemd's own escapes (backslash, quote,
 * `%` specifiers, `$` variables), so a name from a config or manifest stays one literal word.
 * Source: systemd.service(5) "Command lines", systemd.unit(5) "Specifiers".
 */
export function systemdExec(words: string[]): string {
  return words.map((w) => `"${w.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/%/g, '%%').replace(/\$/g, '$$$$')}"`).join(' ');
}

export function kubeletUnit(o: { name: string; pool: string; nodeIP: string }): string {
  const cmd = systemdExec([
    `${KUBELET_DIR}/kubelet`,
    `--config=${KUBELET_DIR}/config.yaml`,
    `--bootstrap-kubeconfig=${BOOTSTRAP_KUBECONFIG}`,
    `--kubeconfig=${KUBELET_DIR}/kubeconfig`,
    `--cert-dir=${KUBELET_DIR}/pki`,
    `--root-dir=${KUBELET_DIR}/root`,
    `--hostname-override=${o.name}`,
    `--node-ip=${o.nodeIP}`,
    `--node-labels=${POOL_LABEL}=${o.pool}`,
    '--v=1',
  ]);
  return `# Installed by gvisor-e2e; removed by \`gvisor-e2e down\`.
[Unit]
Description=kubelet joined to a gvisor-e2e cluster
After=containerd.service
Wants=containerd.service

[Service]
ExecStart=${cmd}
Restart=always
RestartSec=2
`;
}

/** Installs and starts the kubelet (idempotent: a joined kubelet keeps its certificate, and no token is made). */
export async function joinKubelet(node: NodeAccess, o: JoinOptions): Promise<{ bootstrapped: boolean }> {
  const journal = await NodeJournal.open<JoinFacts>(node, JOIN_STATE, BACKUP_SUFFIX);
  if (!journal.existed) {
    const busy = await node.exec(`ss -Hltn 'sport = :10250'`);
    if (busy.stdout.trim()) throw new InfrastructureError(`[${node.name}] port 10250 is taken (${busy.stdout.trim().split('\n')[0]}): another kubelet runs on this host; a host joins only one cluster`);
    const values = await mustExec(node, `for k in ${KUBELET_SYSCTLS.join(' ')}; do cat /proc/sys/$k; done`);
    const v = values.trim().split('\n');
    Object.assign(journal.extra, {
      sysctls: Object.fromEntries(KUBELET_SYSCTLS.map((k, i) => [k, v[i] ?? ''])),
      absentBefore: await absentOnNode(node, KUBELET_FIXED_PATHS),
      started: false,
    } satisfies JoinFacts);
    await journal.save();
  }
  await journal.mkdirs(KUBELET_DIR);
  await journal.put(`${KUBELET_DIR}/kubelet`, o.kubelet, '0755');
  await journal.put(`${KUBELET_DIR}/ca.crt`, o.caPem, '0644');
  await journal.put(`${KUBELET_DIR}/config.yaml`, stringify(joinedKubeletConfig(o)), '0644');
  const unitChanged = await journal.put(KUBELET_UNIT, kubeletUnit(o), '0644');
  if (o.freshControlPlane && journal.extra.started) {
    await node.exec(`systemctl stop ${KUBELET_UNIT_NAME}`, { timeoutMs: 60_000 });
    await mustExec(node, `rm -rf --one-file-system ${KUBELET_DIR}/pki ${KUBELET_DIR}/kubeconfig`);
  }
  const hasCert = (await node.exec(`test -s ${KUBELET_DIR}/pki/kubelet-client-current.pem`)).code === 0;
  if (!hasCert) await journal.put(BOOTSTRAP_KUBECONFIG, await o.bootstrapKubeconfig(), '0600');
  journal.extra.started = true;
  await journal.save();
  await mustExec(node, `systemctl daemon-reload && systemctl ${unitChanged ? 'restart' : 'start'} ${KUBELET_UNIT_NAME}`, { timeoutMs: 60_000 });
  return { bootstrapped: !hasCert };
}

/** Once the node is Ready: the token-bearing kubeconfig goes (the kubelet now has its own certificate). */
export async function forgetBootstrap(node: NodeAccess): Promise<void> {
  const journal = await NodeJournal.open<JoinFacts>(node, JOIN_STATE, BACKUP_SUFFIX);
  if (!journal.existed) return;
  if ((await node.exec(`test -s ${KUBELET_DIR}/pki/kubelet-client-current.pem`)).code !== 0) {
    throw new InfrastructureError(`[${node.name}] the kubelet has no client certificate (${KUBELET_DIR}/pki/kubelet-client-current.pem) after joining`);
  }
  if (await journal.remove(BOOTSTRAP_KUBECONFIG)) await journal.save();
}

/** Stops the kubelet and removes what joining made: files, the kubelet's own tree, log links, kernel settings back. */
export async function leaveKubelet(node: NodeAccess): Promise<string[]> {
  const journal = await NodeJournal.open<JoinFacts>(node, JOIN_STATE, BACKUP_SUFFIX);
  if (!journal.existed) return [];
  const facts = journal.extra;
  await node.exec(`systemctl stop ${KUBELET_UNIT_NAME}`, { timeoutMs: 60_000 });
  return journal.undo(async () => {
    await node.exec(`systemctl reset-failed ${KUBELET_UNIT_NAME} 2>/dev/null; systemctl daemon-reload`);
    const undone: string[] = [];
    // Pod volumes (tmpfs for projected tokens) are mounts under the root dir: unmounted first, never crossed.
    for (const dir of [...KUBELET_MADE, ...(facts.absentBefore ?? [])]) {
      await removeTreeOnNode(node, dir);
      undone.push(dir);
    }
    for (const [k, v] of Object.entries(facts.sysctls ?? {})) {
      if (v && /^[-\d]+$/.test(v)) await node.exec(`[ "$(cat /proc/sys/${k})" = ${sh(v)} ] || echo ${sh(v)} > /proc/sys/${k}`);
    }
    return undone;
  });
}

/** Asks the API (through `get`) until the node is Ready; the wait names the node and what it saw last. */
export async function waitNodeReady(name: string, get: (path: string) => Promise<[number, string]>, timeoutMs: number, kubeletLog: () => Promise<string>): Promise<void> {
  const { until } = await import('../../harness/wait.ts');
  let last = 'not registered';
  try {
    await until(
      () => `node ${name} to register and become Ready (last: ${last})`,
      timeoutMs,
      async () => {
        try {
          const [code, body] = await get(`/api/v1/nodes/${name}`);
          if (code !== 200) return false;
          const ready = (JSON.parse(body) as { status?: { conditions?: { type: string; status: string; message?: string }[] } }).status?.conditions?.find((c) => c.type === 'Ready');
          last = `Ready=${ready?.status ?? 'unknown'}${ready?.message ? `: ${ready.message}` : ''}`;
          return ready?.status === 'True';
        } catch (e) {
          last = (e as Error).message;
          return false;
        }
      },
      2000,
    );
  } catch (e) {
    throw new InfrastructureError(`${(e as Error).message}; kubelet log: ${await kubeletLog()}`, { cause: e });
  }
}

/** The kubelet's last journal lines on the host (for errors). */
export async function kubeletLogTail(node: NodeAccess, lines = 5): Promise<string> {
  const r = await node.exec(`journalctl -u ${KUBELET_UNIT_NAME} --no-pager -o cat -n ${lines} 2>&1`, { timeoutMs: 30_000 }).catch(() => undefined);
  return r?.stdout.trim().replace(/\n/g, ' | ').slice(-1500) || '(none)';
}
