import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { buildContainerd } from '../../harness/binaries.ts';
import { type Config, type NodeConfig, configPath, dnsLabel, dnsName, durationMs, nodeConfig, OS_FAMILIES, sshAccess } from '../../harness/config.ts';
import { InfrastructureError } from '../../harness/errors.ts';
import { buildTestImage } from '../../harness/image.ts';
import { restartContainerd } from '../../harness/installer.ts';
import { NodeJournal } from '../../harness/journal.ts';
import { log, step } from '../../harness/log.ts';
import { absentOnNode, knownHostKeys, mustExec, removeTreeOnNode, sh, SshNode, type NodeAccess } from '../../harness/node.ts';
import { defaultStateDir, StateFile } from '../../harness/state.ts';
import { BaseProvider } from '../common/base.ts';
import { uninstallHosts } from '../common/hosts.ts';
import { addKubernetesObjects, removeKubernetesObjects, type ObjectsRecord } from '../common/objects.ts';
import { checkMembers, requireManifestPools } from '../common/pools.ts';
import { tool } from '../common/tools.ts';
import { bootstrapKubeconfig, issueBootstrapToken, revokeBootstrapTokens } from '../kube/bootstrap.ts';
import { buildKubernetes } from '../kube/build.ts';
import { ControlPlane } from '../kube/controlplane.ts';
import { drainAndDeleteNode } from '../kube/drain.ts';
import { forgetBootstrap, joinKubelet, KUBELET_UNIT_NAME, kubeletLogTail, leaveKubelet, waitNodeReady } from '../kube/join.ts';
import { redact } from '../../harness/redact.ts';
import { clusterLogsDir } from '../../harness/rundir.ts';
import { runSync } from '../../harness/process.ts';
import { defineProvider, type Finding, type Secrets } from '../provider.ts';

// VMs (or any hosts) reached over SSH, which the harness provisions before the normal install:
// the current runsc shim speaks shim protocol v2 as containerd 2.x does, so a host whose
// containerd is missing or older gets the cached containerd 2.x build, a systemd unit for it,
// runc / its shim and CNI plugins where absent, and a config with its own root and state
// directories (the original containerd's data stays untouched). Everything provisioned is recorded
// in PROVISION_STATE on the host, so `down` removes exactly that and restarts what ran before.

/**
 * One host of a `vm` cluster: the SSH fields are the `nodes` provider's (same rules: a host key is
 * always verified), flattened beside what the provider needs to provision it.
 */
const vmHostSchema = z
  .object({
    name: dnsName,
    pool: dnsLabel,
    address: z.string().min(1),
    port: sshAccess.shape.port,
    user: sshAccess.shape.user,
    privateKeyPath: sshAccess.shape.privateKeyPath,
    knownHostsPath: sshAccess.shape.knownHostsPath,
    hostKeyFingerprint: sshAccess.shape.hostKeyFingerprint,
    osFamily: z.enum(OS_FAMILIES).default('auto'),
    /** With `kubernetes`: the kubelet's node IP, which the API server connects to (default: `address`). */
    nodeIP: z.ipv4().optional(),
  })
  .strict()
  .refine((a) => a.knownHostsPath || a.hostKeyFingerprint, {
    message: 'set knownHostsPath or hostKeyFingerprint: host keys are always verified',
  });


const schema = z
  .object({
    /** "vm": hosts (VMs) reached over SSH that the harness provisions: containerd 2.x, CNI, then the normal install. */
    provider: z.literal('vm'),
    name: dnsLabel.default('gvisor-e2e'),
    hosts: z.array(vmHostSchema).min(1),
    /** The kubeconfig of an existing cluster these hosts are nodes of (RuntimeClass, labels, API pods). */
    kubeconfig: configPath.optional(),
    /**
     * Make the hosts a Kubernetes cluster: the harness runs the control plane on this machine and
     * joins each host's kubelet to it (bootstrap token, then certificates the kubelet renews).
     */
    kubernetes: z.boolean().default(false),
    /** With `kubernetes`: the address of this machine the hosts reach the API server at (default: the source address of the route to the first host). */
    apiServerAddress: z.ipv4().optional(),
  })
  .strict();
export type VmCluster = z.infer<typeof schema>;
export type VmHost = VmCluster['hosts'][number];

const capabilities = (c: VmCluster) => ({ kubernetesApi: Boolean(c.kubeconfig) || c.kubernetes, installsNodes: true, cleansUpAfterRun: false, reshapesPools: false });

/** The record of a cluster the harness runs for the hosts (`kubernetes: true`). */
interface JoinedRecord {
  kubeconfig: string;
  apiServerAddress: string;
}

/** How long a bootstrap token lives: one `up` joins every host well within it, and it is deleted after. */
const BOOTSTRAP_TTL_MS = 30 * 60_000;

/** The address of this machine that `to` is reached from (`ip route get`'s source). */
export function sourceAddressTo(to: string): string {
  const routes = JSON.parse(runSync(['ip', '-j', '-4', 'route', 'get', to])) as { prefsrc?: string; dev?: string }[];
  const src = routes[0]?.prefsrc;
  if (!src) throw new InfrastructureError(`no route from this machine to ${to}: set cluster.apiServerAddress to an address of this machine the hosts reach`);
  return src;
}

/** The cgroup driver the node's containerd gives runc (the kubelet must use the same). */
async function cgroupDriverOf(node: NodeAccess): Promise<'systemd' | 'cgroupfs'> {
  const r = await node.exec('containerd config dump 2>/dev/null | grep -E "^\\s*SystemdCgroup\\s*=\\s*true" | head -1', { timeoutMs: 60_000 });
  return r.stdout.trim() ? 'systemd' : 'cgroupfs';
}

export const PROVISION_STATE = '/var/lib/gvisor-e2e/provisioned.json';
/** The provisioned containerd keeps its data apart from any containerd the host had. */
export const CONTAINERD_ROOT = '/var/lib/gvisor-e2e/containerd';
export const CONTAINERD_STATE = '/run/gvisor-e2e/containerd';
export const CONTAINERD_BIN_DIR = '/usr/local/bin';
export const CONTAINERD_UNIT = '/etc/systemd/system/containerd.service';
export const CNI_BIN_DIR = '/opt/cni/bin';
export const CNI_CONFLIST = '/etc/cni/net.d/10-gvisor-e2e.conflist';
/** Backup suffix of files the provider replaced (the installer uses `.gvisor-e2e.orig` for its own). */
const BACKUP_SUFFIX = '.gvisor-e2e-vm.orig';
const CNI_PLUGINS = ['bridge', 'host-local', 'loopback'];

/** What provisionHost keeps in its journal's record, beside the journal's own fields. */
export interface ProvisionFacts {
  /** `containerd --version` before provisioning, or null when there was none. */
  containerdBefore: string | null;
  wasActive: boolean;
  /** The provider enabled containerd.service (disabled again on down). */
  enabled: boolean;
  /** Entries of /run/containerd before provisioning (shims of the new containerd add theirs there, e.g. runsc's root). */
  runBefore?: string[];
  /** Of RUNTIME_MADE_PATHS, those absent before provisioning (the runtime made them; removed on unprovision). */
  absentBefore?: string[];
  /** The CNI bridge of the provider's conflist existed before (else it is deleted on unprovision). */
  bridgeBefore?: boolean;
}

/**
 * Paths containerd 2.x, its CRI plugin and CNI make at fixed places whatever their root says: the CNI
 * result cache and host-local leases (/var/lib/cni), network namespaces (/run/netns), the NRI socket
 * (/run/nri), CRI's pod log dirs (/var/log/pods) and the introspection plugin's uuid.
 */
const INTROSPECTION_DIR = '/var/lib/containerd/io.containerd.grpc.v1.introspection';
export const RUNTIME_MADE_PATHS = ['/var/lib/cni', '/run/netns', '/run/nri', '/var/log/pods', INTROSPECTION_DIR];
/** The bridge renderCniConflist names. */
const CNI_BRIDGE = 'gve2e0';

export interface ContainerdVersion {
  major: number;
  minor: number;
  patch: number;
  raw: string;
}

/** Parses `containerd --version` ("containerd github.com/containerd/containerd/v2 v2.2.9 <rev>", Debian's "… 1.6.20~ds1 …"). */
export function parseContainerdVersion(out: string): ContainerdVersion | undefined {
  const fields = out.trim().split(/\s+/);
  for (const f of fields.slice(1)) {
    const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(f);
    if (m) return { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3]), raw: f };
  }
  return undefined;
}

/** The runsc shim needs containerd 2.x (shim bootstrap protocol v2). */
export function containerdNewEnough(v: ContainerdVersion | undefined): boolean {
  return v !== undefined && v.major >= 2;
}

/** The unit the provider installs (containerd's own, without LimitNOFILE: the drop-in under test sets it). */
export function renderContainerdUnit(binDir = CONTAINERD_BIN_DIR): string {
  return `# Installed by gvisor-e2e (vm provider); removed by \`gvisor-e2e down\`.
[Unit]
Description=containerd container runtime (provisioned by gvisor-e2e)
Documentation=https://containerd.io
After=network.target local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=${binDir}/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
`;
}

/** config.toml (schema 3) for the provisioned containerd: own root/state, the offline sandbox image, CNI. */
export function renderProvisionedConfig(o: { sandboxImage: string; cniBinDir: string; root?: string; state?: string }): string {
  return `# Written by gvisor-e2e (vm provider) for the containerd it provisioned; the original is restored by \`gvisor-e2e down\`.
version = 3
root = "${o.root ?? CONTAINERD_ROOT}"
state = "${o.state ?? CONTAINERD_STATE}"

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "${o.sandboxImage}"

[plugins."io.containerd.internal.v1.opt"]
  path = "${o.root ?? CONTAINERD_ROOT}/opt"

[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["${o.cniBinDir}"]
  conf_dir = "/etc/cni/net.d"
`;
}

export function renderCniConflist(subnet = '10.88.0.0/16'): string {
  return `${JSON.stringify(
    {
      cniVersion: '1.0.0',
      name: 'gvisor-e2e',
      plugins: [{ type: 'bridge', bridge: CNI_BRIDGE, isGateway: true, ipMasq: false, ipam: { type: 'host-local', ranges: [[{ subnet }]], routes: [{ dst: '0.0.0.0/0' }] } }],
    },
    null,
    2,
  )}\n`;
}

export function vmNodeConfig(h: VmHost): NodeConfig {
  return nodeConfig({
    name: h.name,
    pool: h.pool,
    access: { type: 'ssh', host: h.address, port: h.port, user: h.user, privateKeyPath: h.privateKeyPath, knownHostsPath: h.knownHostsPath, hostKeyFingerprint: h.hostKeyFingerprint },
    osFamily: h.osFamily,
  });
}

/** A binary of the harness machine, for hosts that lack it (same distribution family assumed). */
function hostBinary(name: string, dirs: string[]): string | undefined {
  return dirs.map((d) => `${d}/${name}`).find((p) => existsSync(p));
}

async function containerdVersion(node: NodeAccess): Promise<ContainerdVersion | undefined> {
  const r = await node.exec('containerd --version 2>/dev/null');
  return r.code === 0 ? parseContainerdVersion(r.stdout) : undefined;
}

export interface ProvisionResult {
  host: string;
  before: string | null;
  after: string;
  changed: string[];
}

/** Makes one host able to run the runsc shim (idempotent); returns what changed. */
export async function provisionHost(node: NodeAccess, cfg: Config, sandboxImage: string): Promise<ProvisionResult> {
  const init = await node.exec('cat /proc/1/comm; uname -m');
  const [pid1, arch] = init.stdout.trim().split('\n');
  if (init.code !== 0 || pid1 !== 'systemd') {
    throw new InfrastructureError(`[${node.name}] PID 1 is "${pid1 ?? '?'}", not systemd: the vm provider runs containerd as a systemd service`);
  }
  const want = process.arch === 'arm64' ? 'aarch64' : 'x86_64';
  if (arch !== want) throw new InfrastructureError(`[${node.name}] is ${arch}, but the harness builds containerd and runsc for ${want}`);

  const journal = await NodeJournal.open<ProvisionFacts>(node, PROVISION_STATE, BACKUP_SUFFIX);
  const current = await containerdVersion(node);
  if (!journal.existed && containerdNewEnough(current)) {
    log('info', `[${node.name}] containerd ${current!.raw} is new enough for the runsc shim: nothing to provision`);
    return { host: node.name, before: current!.raw, after: current!.raw, changed: [] };
  }
  const state = journal.extra;
  if (!journal.existed) {
    const active = (await node.exec('systemctl is-active containerd')).stdout.trim() === 'active';
    const runBefore = (await node.exec('ls -A /run/containerd 2>/dev/null')).stdout.split('\n').filter(Boolean);
    const absentBefore = await absentOnNode(node, RUNTIME_MADE_PATHS);
    const bridgeBefore = (await node.exec(`ip link show ${CNI_BRIDGE}`)).code === 0;
    Object.assign(state, { containerdBefore: current?.raw ?? null, wasActive: active, enabled: false, runBefore, absentBefore, bridgeBefore } satisfies ProvisionFacts);
    log('info', `[${node.name}] containerd ${current ? `${current.raw} is too old for the runsc shim (needs >= 2.0)` : 'is missing'}: provisioning containerd 2.x`);
  }
  const changed: string[] = [];
  /** Writes a file when it differs; `once`: leave it alone after the first write (the installer renders on top of it). */
  const put = async (path: string, content: Buffer | string, mode: string, once = false) => {
    if (await journal.put(path, content, mode, { once })) changed.push(path);
  };

  await journal.save();
  const bins = await buildContainerd();
  await put(`${CONTAINERD_BIN_DIR}/containerd`, readFileSync(bins.containerd), '0755');
  await put(`${CONTAINERD_BIN_DIR}/ctr`, readFileSync(bins.ctr), '0755');

  // runc and runc's shim: the host's own if it has them, else the harness machine's.
  for (const [name, dirs, dest] of [
    ['runc', ['/usr/sbin', '/usr/bin', '/usr/local/sbin'], '/usr/local/sbin'],
    ['containerd-shim-runc-v2', ['/usr/bin', '/usr/local/bin'], CONTAINERD_BIN_DIR],
  ] as const) {
    const ours = `${dest}/${name}`;
    if (!journal.created(ours) && (await node.exec(`command -v ${name}`)).code === 0) continue;
    const src = hostBinary(name, [...dirs]);
    if (!src) throw new InfrastructureError(`[${node.name}] has no ${name} and neither has this machine to copy it from: apt-get install -y ${name === 'runc' ? 'runc' : 'containerd'}`);
    await put(ours, readFileSync(src), '0755');
  }

  // CNI plugins: a directory on the host that has them all, else this machine's under /opt/cni/bin.
  let cniDir = '';
  for (const d of [CNI_BIN_DIR, '/usr/lib/cni', '/usr/libexec/cni']) {
    if ((await node.exec(CNI_PLUGINS.map((p) => `[ -x ${d}/${p} ]`).join(' && '))).code === 0 && !journal.created(`${d}/bridge`)) {
      cniDir = d;
      break;
    }
  }
  if (!cniDir) {
    cniDir = CNI_BIN_DIR;
    for (const p of CNI_PLUGINS) {
      const src = hostBinary(p, ['/usr/lib/cni', '/opt/cni/bin']);
      if (!src) throw new InfrastructureError(`[${node.name}] has no CNI plugin ${p} and neither has this machine: apt-get install -y containernetworking-plugins`);
      await put(`${CNI_BIN_DIR}/${p}`, readFileSync(src), '0755');
    }
  }
  const confs = await node.exec(`ls /etc/cni/net.d/*.conf /etc/cni/net.d/*.conflist 2>/dev/null | grep -v ${sh(CNI_CONFLIST)}`);
  if (confs.stdout.trim() === '') await put(CNI_CONFLIST, renderCniConflist(), '0644');

  await put(node.config.paths.containerdConfig, renderProvisionedConfig({ sandboxImage, cniBinDir: cniDir }), '0644', true);
  await put(CONTAINERD_UNIT, renderContainerdUnit(), '0644');
  if ((await node.exec('systemctl is-enabled containerd')).stdout.trim() !== 'enabled') {
    state.enabled = true;
    await journal.save(); // recorded first, like every change
    await mustExec(node, 'systemctl daemon-reload && systemctl enable containerd');
    changed.push('systemctl enable containerd');
  }
  await journal.save();
  if (changed.length > 0) await restartContainerd(node, cfg);
  const after = await containerdVersion(node);
  if (!containerdNewEnough(after)) {
    throw new InfrastructureError(`[${node.name}] after provisioning, \`containerd --version\` reports ${after?.raw ?? 'nothing'}, expected 2.x from ${CONTAINERD_BIN_DIR}`);
  }
  return { host: node.name, before: state.containerdBefore ?? null, after: after!.raw, changed };
}

/** Removes what provisionHost put on the host and brings back the containerd that ran before. */
export async function unprovisionHost(node: NodeAccess, cfg: Config): Promise<string[]> {
  const journal = await NodeJournal.open<ProvisionFacts>(node, PROVISION_STATE, BACKUP_SUFFIX);
  if (!journal.existed) return [];
  const state = journal.extra;
  await node.exec('systemctl stop containerd', { timeoutMs: 60_000 });
  // Shims of the provisioned containerd (pods `down` could not remove) live in its state dir.
  await node.exec(`for p in /proc/[0-9]*; do case "$(readlink $p/cwd 2>/dev/null)" in ${CONTAINERD_STATE}/*) kill -9 "\${p#/proc/}";; esac; done; true`);
  // Files first, then (while the record still exists) what the provisioned containerd left; then the record and its dirs.
  const undone = await journal.undo(async () => {
    if (state.enabled) await node.exec('systemctl disable containerd');
    await mustExec(node, 'systemctl daemon-reload');
    // What the provisioned containerd and its shims made under /run/containerd (e.g. the runsc shim's root).
    const runNow = (await node.exec('ls -A /run/containerd 2>/dev/null')).stdout.split('\n').filter(Boolean);
    const runNew = state.runBefore ? runNow.filter((e) => !state.runBefore!.includes(e)).map((e) => `/run/containerd/${e}`) : [];
    // The provisioned containerd's data and what the runtime made at fixed paths: mounts first (lazily), then the trees.
    const made = [CONTAINERD_ROOT, CONTAINERD_STATE, ...runNew, ...(state.absentBefore ?? [])];
    for (const dir of made) await removeTreeOnNode(node, dir);
    if (state.bridgeBefore === false && (await node.exec(`ip link show ${CNI_BRIDGE}`)).code === 0) {
      await mustExec(node, `ip link del ${CNI_BRIDGE}`);
      made.push(`link ${CNI_BRIDGE}`);
    }
    return made;
  });
  await node.exec('rmdir /run/gvisor-e2e /run/containerd 2>/dev/null; true');
  if (state.wasActive) {
    await restartContainerd(node, cfg);
    // The original containerd writes its introspection uuid when first asked after a start (the
    // readiness probe just did): the host had none before the harness came, so none is left.
    if (state.absentBefore?.includes(INTROSPECTION_DIR)) await removeTreeOnNode(node, INTROSPECTION_DIR);
  }
  return undone;
}

export class VmProvider extends BaseProvider<VmCluster> {
  /** With a kubeconfig, the cluster is someone else's: what install adds there is recorded here and removed by uninstall. */
  private readonly objects?: StateFile<ObjectsRecord>;
  /** With `kubernetes`, the cluster is the harness's own: its control plane's record. */
  private readonly joined?: StateFile<JoinedRecord>;
  constructor(cfg: Config & { cluster: VmCluster }) {
    const stateDir = cfg.cluster.kubeconfig || cfg.cluster.kubernetes ? defaultStateDir(`vm-${cfg.cluster.name}`) : undefined;
    super(cfg, capabilities(cfg.cluster), stateDir);
    if (stateDir && cfg.cluster.kubeconfig) this.objects = new StateFile<ObjectsRecord>(stateDir, { provider: 'vm', cluster: cfg.cluster.name });
    if (stateDir && cfg.cluster.kubernetes) this.joined = new StateFile<JoinedRecord>(stateDir, { provider: 'vm', cluster: cfg.cluster.name });
  }

  /** As on an existing cluster: only what is missing is added (recorded first); a RuntimeClass or label that is there stays as it is. */
  override async installKubernetesObjects(nodes: NodeConfig[]): Promise<void> {
    // The harness's own cluster: its objects go with its control plane.
    if (this.joined) return super.installKubernetesObjects(nodes);
    if (!this.spec.kubeconfig || !this.objects) return;
    const rec = this.objects.read() ?? { runtimeClasses: [], nodeLabels: [] };
    await addKubernetesObjects(this.spec.kubeconfig, this.cfg, nodes, rec, () => this.objects!.write(rec), this.spec.name);
  }

  private async undoKubernetesObjects(): Promise<void> {
    const rec = this.objects?.read();
    if (!rec || !this.spec.kubeconfig) return;
    await removeKubernetesObjects(this.spec.kubeconfig, rec, () => this.objects!.write(rec));
    this.objects!.remove();
  }

  nodes(): NodeConfig[] {
    return this.spec.hosts.map(vmNodeConfig);
  }

  async up(): Promise<NodeConfig[]> {
    const nodes = this.nodes();
    const image = await buildTestImage();
    await Promise.all(nodes.map(async (n) => {
      const node = new SshNode(n);
      try {
        const r = await step(`provision ${n.name} (${n.access.type === 'ssh' ? `${n.access.host}:${n.access.port}` : ''})`, () => provisionHost(node, this.cfg, image.pause));
        log('info', `[${n.name}] containerd ${r.before ?? '(none)'} → ${r.after}${r.changed.length ? `; changed: ${r.changed.join(', ')}` : ''}`);
      } finally {
        await node.close();
      }
    }));
    if (this.joined) await this.joinHosts(nodes);
    return nodes;
  }

  /**
   * The control plane runs on this machine (as the local provider's does), serving on the address the
   * hosts reach it at; each host's kubelet joins with a bootstrap token made for this `up` and
   * deleted as soon as every host holds a certificate of its own.
   */
  private async joinHosts(nodes: NodeConfig[]): Promise<void> {
    const joined = this.joined!;
    joined.checkOwnership();
    const address = this.spec.apiServerAddress ?? sourceAddressTo(this.spec.hosts[0]!.nodeIP ?? this.spec.hosts[0]!.address);
    const bins = await buildKubernetes();
    let cp = joined.read() ? ControlPlane.attach(this.stateDir!) : undefined;
    if (cp && joined.read()?.apiServerAddress === address) {
      try {
        await cp.waitReady(15_000);
      } catch {
        log('info', `the control plane of cluster "${this.spec.name}" is not answering: starting it again`);
        cp = undefined;
      }
    } else cp = undefined;
    const fresh = !cp;
    if (!cp) {
      ControlPlane.stop(this.stateDir!);
      joined.write({ kubeconfig: join(this.stateDir!, 'control-plane', 'admin.kubeconfig'), apiServerAddress: address });
      cp = await step(`start the Kubernetes control plane on ${address} (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)`, () => ControlPlane.start(this.stateDir!, bins, 120_000, { address }));
    }
    const controlPlane = cp;
    const kubelet = readFileSync(bins.kubelet);
    const caPem = readFileSync(controlPlane.pki.ca.crt, 'utf8');
    // One token for the hosts that still need one, made on first demand.
    let token: Promise<string> | undefined;
    const bootstrap = () =>
      (token ??= issueBootstrapToken(controlPlane.adminKubeconfig, this.spec.name, BOOTSTRAP_TTL_MS).then((t) => {
        log('info', `bootstrap token ${t.id} made for cluster "${this.spec.name}" (expires ${t.expires.toISOString()}; deleted once the hosts have joined)`);
        return bootstrapKubeconfig(controlPlane.server, caPem, t.token);
      }));
    try {
      await Promise.all(nodes.map(async (n, i) => {
        const h = this.spec.hosts[i]!;
        const node = new SshNode(n);
        try {
          await step(`join ${n.name} to the cluster (kubelet, node IP ${h.nodeIP ?? h.address})`, async () => {
            const driver = await cgroupDriverOf(node);
            await joinKubelet(node, { name: n.name, pool: n.pool, nodeIP: h.nodeIP ?? h.address, server: controlPlane.server, caPem, kubelet, containerdSocket: n.paths.containerdSocket, cgroupDriver: driver, bootstrapKubeconfig: bootstrap, freshControlPlane: fresh });
            await waitNodeReady(n.name, (p) => controlPlane.get(p), 2 * durationMs(this.cfg.timeouts.container), () => kubeletLogTail(node));
            await forgetBootstrap(node);
          });
        } finally {
          await node.close();
        }
      }));
    } finally {
      if (token) {
        const ids = await revokeBootstrapTokens(controlPlane.adminKubeconfig);
        log('info', `bootstrap token(s) ${ids.join(', ')} deleted`);
      }
    }
  }

  /** Set once this provider undid the install (the verb's uninstall and `down`'s own need it once). */
  private uninstalled = false;

  /** The install comes off before `down` removes the containerd it was made for. */
  override async uninstall(): Promise<void> {
    if (this.uninstalled) return;
    await this.undoKubernetesObjects();
    await uninstallHosts(this.cfg, this.nodes());
    this.uninstalled = true;
  }

  async down(): Promise<void> {
    const kubeconfig = this.joined?.read()?.kubeconfig;
    // Nodes leave the cluster while their kubelets still run, so their pods stop the way pods do.
    if (kubeconfig && existsSync(kubeconfig)) {
      const cp = ControlPlane.attach(this.stateDir!);
      const answering = await cp?.waitReady(10_000).then(() => true, () => false);
      if (answering) {
        for (const n of this.nodes()) {
          const r = await step(`drain and delete node ${n.name}`, () => drainAndDeleteNode(kubeconfig, n.name, durationMs(this.cfg.timeouts.container)));
          log('info', `[${n.name}] drained (${r.evicted.length} pod(s) evicted${r.forced.length ? `, ${r.forced.length} deleted by force` : ''}) and deleted`);
        }
      } else log('warn', `the control plane of cluster "${this.spec.name}" does not answer: Node objects go with it, not drained`);
    }
    // Also with --keep-install: the install cannot outlive the containerd it was made for.
    await this.uninstall();
    await Promise.all(this.nodes().map(async (n) => {
      const node = new SshNode(n);
      try {
        if (this.joined) {
          const left = await step(`stop the kubelet on ${n.name}`, () => leaveKubelet(node));
          if (left.length) log('info', `[${n.name}] kubelet stopped; removed: ${left.join(', ')}`);
        }
        const undone = await step(`unprovision ${n.name}`, () => unprovisionHost(node, this.cfg));
        log('info', `[${n.name}] provider removed/restored: ${undone.join(', ') || 'nothing (not provisioned)'}`);
      } finally {
        await node.close();
      }
    }));
    if (this.joined && this.stateDir) {
      this.joined.checkOwnership();
      if (existsSync(join(this.stateDir, 'control-plane'))) await step('stop the Kubernetes control plane', async () => ControlPlane.stop(this.stateDir!));
      this.joined.remove();
    }
  }

  override kubeconfig(): string | undefined {
    return this.spec.kubeconfig ?? this.joined?.read()?.kubeconfig;
  }

  /** Each host's containerd and kubelet journal, and the control plane's logs when it is the harness's: for a failed run's report. */
  override async collectLogs(reportsDir: string): Promise<string> {
    const dir = clusterLogsDir(reportsDir, 'vm', this.spec.name);
    mkdirSync(dir, { recursive: true });
    await Promise.all(this.nodes().map(async (n) => {
      const node = new SshNode(n);
      try {
        const r = await node.exec(`journalctl -u containerd -u ${KUBELET_UNIT_NAME} --no-pager -o short-iso -n 5000 2>&1`, { timeoutMs: 120_000 });
        writeFileSync(join(dir, `${n.name}.journal.log`), redact(r.stdout));
      } catch (e) {
        writeFileSync(join(dir, `${n.name}.journal.log`), `not collected: ${(e as Error).message}\n`);
      } finally {
        await node.close();
      }
    }));
    const cp = this.stateDir ? join(this.stateDir, 'control-plane') : undefined;
    for (const f of cp && existsSync(cp) ? readdirSync(cp).filter((x) => x.endsWith('.log')) : []) writeFileSync(join(dir, f), redact(readFileSync(join(cp!, f), 'utf8')));
    return dir;
  }

  override secrets(): Secrets {
    const kc = this.kubeconfig();
    return { keyFiles: this.spec.hosts.map((h) => h.privateKeyPath), kubeconfigs: kc ? [kc] : [] };
  }

  async doctor(): Promise<Finding[]> {
    const f = [tool('ssh-keygen', 'openssh-client', 'host keys'), ...(await vmDoctor(this.spec))];
    if (this.spec.kubernetes) {
      const first = this.spec.hosts[0]!;
      try {
        const at = this.spec.apiServerAddress ?? sourceAddressTo(first.nodeIP ?? first.address);
        f.push({ check: 'API server address for the hosts', ok: true, detail: `${at}${this.spec.apiServerAddress ? '' : ` (the source of the route to ${first.nodeIP ?? first.address})`}` });
      } catch (e) {
        f.push({ check: 'API server address for the hosts', ok: false, detail: (e as Error).message, fix: 'set cluster.apiServerAddress' });
      }
      f.push(tool('openssl', 'openssl', 'the cluster CA and certificates'));
    }
    return f;
  }

  override async warm(): Promise<void> {
    await buildContainerd();
    if (this.spec.kubernetes) await buildKubernetes();
  }
}

/** What `doctor` says about each host: key files, pinned host key, SSH, systemd, containerd. */
export async function vmDoctor(spec: VmCluster): Promise<Finding[]> {
  const f: Finding[] = [];
  for (const h of spec.hosts) {
    const at = `${h.user}@${h.address}:${h.port}`;
    const keyOk = existsSync(h.privateKeyPath);
    f.push({ check: `${h.name}: private key`, ok: keyOk, detail: keyOk ? h.privateKeyPath : `${h.privateKeyPath} does not exist`, fix: keyOk ? undefined : `set cluster.hosts[].privateKeyPath to a key ${at} accepts` });
    if (h.knownHostsPath) {
      let keys = 0;
      let why = '';
      try {
        keys = knownHostKeys(readFileSync(h.knownHostsPath, 'utf8'), h.address, h.port).length;
        if (!keys) why = `${h.knownHostsPath} has no key for ${h.port === 22 ? h.address : `[${h.address}]:${h.port}`}`;
      } catch (e) {
        why = `cannot read ${h.knownHostsPath}: ${(e as NodeJS.ErrnoException).code}`;
      }
      f.push({
        check: `${h.name}: pinned host key`,
        ok: keys > 0,
        detail: keys > 0 ? `${keys} key(s) in ${h.knownHostsPath}` : why,
        fix: keys > 0 ? undefined : `add the host's key, checked out of band: ssh-keyscan -p ${h.port} ${h.address} (then verify its fingerprint) >> ${h.knownHostsPath}`,
      });
    } else {
      f.push({ check: `${h.name}: pinned host key`, ok: true, detail: `fingerprint ${h.hostKeyFingerprint}` });
    }
    if (!keyOk) continue;
    const node = new SshNode(vmNodeConfig(h));
    try {
      const r = await node.exec('cat /proc/1/comm; (containerd --version || echo none) 2>/dev/null; command -v sha256sum >/dev/null && echo sha256sum', { timeoutMs: 20_000 });
      const [pid1, ctrd, sum] = r.stdout.trim().split('\n');
      f.push({ check: `${h.name}: SSH ${at}`, ok: true, detail: 'reachable, host key verified' });
      f.push({ check: `${h.name}: systemd is PID 1`, ok: pid1 === 'systemd', detail: pid1 ?? '?', fix: pid1 === 'systemd' ? undefined : 'the vm provider runs containerd as a systemd service' });
      const v = parseContainerdVersion(ctrd ?? '');
      f.push({ check: `${h.name}: containerd`, ok: true, detail: v ? `${v.raw}${containerdNewEnough(v) ? '' : ' (< 2.0: `up` provisions containerd 2.x)'}` : 'none (`up` provisions containerd 2.x)' });
      f.push({ check: `${h.name}: sha256sum`, ok: sum === 'sha256sum', detail: sum === 'sha256sum' ? 'present' : 'missing', fix: sum === 'sha256sum' ? undefined : 'install coreutils on the host' });
    } catch (e) {
      f.push({ check: `${h.name}: SSH ${at}`, ok: false, detail: (e as Error).message, fix: `check cluster.hosts[] (${h.name}): address, port, user, key, host key` });
    } finally {
      await node.close();
    }
  }
  return f;
}

export const vm = defineProvider<VmCluster>({
  provider: 'vm',
  schema,
  check(c, cfg, issue) {
    checkMembers(c.hosts, 'hosts', cfg.gvisor.pools, issue);
    const seen = new Map<string, number>();
    c.hosts.forEach((h, i) => {
      const at = `${h.address}:${h.port}`;
      if (seen.has(at)) issue(['cluster', 'hosts', i, 'address'], `${at} is already host [${seen.get(at)}]`);
      seen.set(at, i);
      // The API server connects to each kubelet at its node IP: a port forwarded to this machine's loopback is not one.
      if (c.kubernetes && !h.nodeIP && (/^127\./.test(h.address) || h.address === 'localhost')) {
        issue(['cluster', 'hosts', i, 'nodeIP'], `host ${h.name} is reached at ${h.address}, a loopback address: with kubernetes: true the API server connects to its kubelet, so give the host's own IPv4 address (address or nodeIP) on a network this machine reaches`);
      }
    });
    if (c.kubernetes && c.kubeconfig) issue(['cluster', 'kubernetes'], 'set either kubernetes: true (the harness runs the cluster) or kubeconfig (the hosts are nodes of that cluster), not both');
  },
  resolvePaths(c, paths) {
    c.hosts.forEach((h, i) => paths.keyFiles(h, `cluster.hosts[${i}]`));
    if (c.kubeconfig) c.kubeconfig = paths.path(c.kubeconfig);
  },
  capabilities,
  poolNames: (c) => [...new Set(c.hosts.map((h) => h.pool))],
  applyManifest(c, spec) {
    requireManifestPools(vm.poolNames(c), spec);
    return c;
  },
  // The hosts are fixed: repro runs on them when their pools are the manifest's (applyManifest checks).
  forRepro: (c) => c,
  create: (cfg) => new VmProvider(cfg),
});
