import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { z } from 'zod';
import { buildContainerd, cacheRoot } from '../../harness/binaries.ts';
import { type Config, type NodeConfig, configPath, dnsLabel, nodeConfig, OS_FAMILIES } from '../../harness/config.ts';
import { InfrastructureError } from '../../harness/errors.ts';
import { buildTestImage } from '../../harness/image.ts';
import { log, step } from '../../harness/log.ts';
import { runSync } from '../../harness/process.ts';
import { defaultStateDir, StateFile } from '../../harness/state.ts';
import { BaseProvider } from '../common/base.ts';
import { checkPoolList } from '../common/pools.ts';
import { file, tool } from '../common/tools.ts';
import { defineProvider, type Finding } from '../provider.ts';
import { buildKubernetes, kubeBinariesFromDir } from '../kube/build.ts';
import { ControlPlane } from '../kube/controlplane.ts';
import { startKubelet } from '../kube/kubelet.ts';
import { HostNode } from './host-node.ts';
import { ensureNspawnRootfs, NspawnNode, nspawnAlive, stopRecordedNspawn } from './nspawn-node.ts';
import { freePort } from '../../harness/net.ts';
import { settleAll } from '../../harness/map-limit.ts';

// The embedded default cluster: nodes made on this machine, no Docker, no VM. "host" nodes are
// namespaces with containerd 2.x and the runsc shim (gVisor pools); "systemd" nodes are Debian
// booted by systemd-nspawn, where a real systemd manages containerd (the LimitNOFILE drop-in).
// Every node is recorded in <stateDir>/state.json the moment it exists, so `down` — also
// from another shell after a crash — removes exactly what was made.

interface NodeRecord {
  name: string;
  pool: string;
  kind: 'host' | 'systemd';
  stateDir: string;
  sshPort: number;
  knownHostsLine: string;
  osFamily: string;
  /** nspawn pid (systemd nodes). */
  pid?: number;
  machine?: string;
  restartCommand?: string;
}

interface State {
  cluster: string;
  nodes: NodeRecord[];
  /** Admin kubeconfig, when the cluster runs Kubernetes. */
  kubeconfig?: string;
}

const schema = z
  .object({
    /** "local": the embedded default: throwaway nodes on this machine, made and removed by the harness. */
    provider: z.literal('local'),
    name: dnsLabel.default('gvisor-e2e'),
    /** Where node state lives (must not be on a tmpfs that hides it from `down` in another shell). */
    stateDir: configPath.optional(),
    /** Make the nodes a real Kubernetes cluster: control plane processes plus a kubelet on every host node. */
    kubernetes: z.boolean().default(false),
    /** Official release binaries to use instead of building them (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl, etcd). */
    kubernetesBinDir: configPath.optional(),
    pools: z
      .array(
        z
          .object({
            /** Node names are <pool>-<n> (a DNS-1123 label too), so a pool name leaves room for the suffix. */
            name: dnsLabel.refine((s) => s.length <= 60, 'at most 60 characters (node names <pool>-<n> are DNS-1123 labels)'),
            nodes: z.number().int().min(1).max(64).default(1),
            /** host: a user+mount+network namespace node on this machine; systemd: a Debian booted with systemd-nspawn. */
            kind: z.enum(['host', 'systemd']).default('host'),
            osFamily: z.enum(OS_FAMILIES).default('auto'),
          })
          .strict(),
      )
      .min(1),
  })
  .strict();
export type LocalCluster = z.infer<typeof schema>;

const capabilities = (c: LocalCluster) => ({ kubernetesApi: c.kubernetes, installsNodes: true, cleansUpAfterRun: true, reshapesPools: true });

export class LocalProvider extends BaseProvider<LocalCluster> {
  private readonly state: StateFile<State>;
  constructor(cfg: Config & { cluster: LocalCluster }) {
    const stateDir = cfg.cluster.stateDir ?? defaultStateDir(cfg.cluster.name);
    super(cfg, capabilities(cfg.cluster), stateDir);
    this.state = new StateFile<State>(stateDir, { provider: 'local', cluster: cfg.cluster.name }, (s) => s.provider === undefined && s.runtimeClasses === undefined);
  }

  private get dir(): string {
    return this.state.dir;
  }
  private readState(): State | undefined {
    return this.state.read();
  }
  private writeState(s: State): void {
    this.state.write(s);
  }
  private get keyPath(): string {
    return join(this.dir, 'ssh', 'id_ed25519');
  }
  private get knownHostsPath(): string {
    return join(this.dir, 'ssh', 'known_hosts');
  }

  private toNodeConfig(r: NodeRecord): NodeConfig {
    return nodeConfig({
      name: r.name,
      pool: r.pool,
      access: { type: 'ssh', host: '127.0.0.1', port: r.sshPort, user: 'root', privateKeyPath: this.keyPath, knownHostsPath: this.knownHostsPath },
      osFamily: r.osFamily as NodeConfig['osFamily'],
      ...(r.restartCommand ? { containerd: { restartCommand: r.restartCommand } } : {}),
    });
  }

  override kubeconfig(): string | undefined {
    return this.readState()?.kubeconfig;
  }

  override async warm(): Promise<void> {
    // At once (see app's warm): debootstrap mostly waits on the mirror while Go compiles.
    await settleAll([
      buildContainerd(),
      ...(this.spec.kubernetes && !this.spec.kubernetesBinDir ? [buildKubernetes()] : []),
      step('build the busybox test image', () => buildTestImage()),
      ...(this.spec.pools.some((p) => p.kind === 'systemd') ? [step('prepare the Debian rootfs for systemd nodes', () => ensureNspawnRootfs({ cacheDir: join(cacheRoot(), 'rootfs'), onProgress: (m) => log('info', `  ${m}`) }))] : []),
    ]);
  }

  async doctor(): Promise<Finding[]> {
    const kinds = new Set(this.spec.pools.map((p) => p.kind));
    const f: Finding[] = [tool('unshare', 'util-linux', 'node namespaces'), tool('nsenter', 'util-linux', 'node namespaces')];
    f.push(tool('ssh-keygen', 'openssh-client', 'node keys'), tool('sha256sum', 'coreutils', 'idempotent installs'));
    if (kinds.has('host')) {
      f.push(file('/usr/sbin/sshd', 'openssh-server', 'node access'));
      f.push(tool('runc', 'runc', 'runc pods on host nodes'));
      f.push(file('/usr/lib/cni/bridge', 'containernetworking-plugins', 'pod network'));
    }
    if (kinds.has('systemd')) f.push(tool('systemd-nspawn', 'systemd-container', 'systemd nodes'), tool('debootstrap', 'debootstrap', 'systemd node rootfs'));
    return f;
  }

  private alive(r: NodeRecord): boolean {
    if (r.kind === 'host') return HostNode.attach(r.stateDir)?.alive() ?? false;
    return r.pid !== undefined && r.machine !== undefined && nspawnAlive(r.pid, r.machine);
  }

  async up(): Promise<NodeConfig[]> {
    // A directory the harness did not make is refused (exit 64) before anything goes into it.
    this.state.checkOwnership();
    const existing = this.readState();
    const wanted = this.spec.pools.flatMap((p) => Array.from({ length: p.nodes }, (_, i) => ({ pool: p, name: `${p.name}-${i + 1}` })));
    if (existing) {
      const same = existing.nodes.length === wanted.length && wanted.every((w) => existing.nodes.some((n) => n.name === w.name && n.kind === w.pool.kind));
      if (same && Boolean(existing.kubeconfig) === this.spec.kubernetes && existing.nodes.every((n) => this.alive(n))) {
        log('info', `cluster "${this.spec.name}" is up (${existing.nodes.length} nodes, state ${this.dir})`);
        return existing.nodes.map((n) => this.toNodeConfig(n));
      }
      log('info', `cluster "${this.spec.name}" is stale or differs from the config: removing it first`);
      await this.down();
    }
    try {
      // The record (with its owner marker) first: `down` removes the directory only while it holds it.
      const state: State = { cluster: this.spec.name, nodes: [] };
      this.writeState(state);
      mkdirSync(join(this.dir, 'ssh'), { recursive: true, mode: 0o700 });
      runSync(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', `gvisor-e2e-${this.spec.name}`, '-f', this.keyPath]);
      const pub = readFileSync(`${this.keyPath}.pub`, 'utf8');
      const image = await buildTestImage();
      const needHost = wanted.some((w) => w.pool.kind === 'host');
      const needSystemd = wanted.some((w) => w.pool.kind === 'systemd');
      const containerd = needHost ? await buildContainerd() : undefined;
      const kube = this.spec.kubernetes ? (this.spec.kubernetesBinDir ? kubeBinariesFromDir(this.spec.kubernetesBinDir) : await buildKubernetes()) : undefined;
      const cp = kube ? await step('start the Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)', () => ControlPlane.start(this.dir, kube)) : undefined;
      if (cp) {
        state.kubeconfig = cp.adminKubeconfig;
        this.writeState(state);
      }
      let hostIndex = 0;
      const rootfs = needSystemd
        ? await step('prepare the Debian rootfs for systemd nodes', () => ensureNspawnRootfs({ cacheDir: join(cacheRoot(), 'rootfs'), onProgress: (m) => log('info', `  ${m}`) }))
        : undefined;
      for (const w of wanted) {
        const dir = join(this.dir, 'nodes', w.name);
        const sshPort = await freePort();
        if (w.pool.kind === 'host') {
          const i = hostIndex++;
          const n = await step(`start node ${w.name} (pool ${w.pool.name}, host namespaces, containerd ${containerd!.dir.split('/').pop()})`, () =>
            HostNode.start({ name: w.name, stateDir: dir, sshPort, authorizedKey: pub, sandboxImage: image.pause, containerdBinDir: containerd!.dir, configVersion: 3, podSubnet: `10.244.${i}.0/24` }),
          );
          // Recorded before anything else can fail, so that a failed `up` still removes it.
          state.nodes.push({ name: w.name, pool: w.pool.name, kind: 'host', stateDir: dir, sshPort, knownHostsLine: n.knownHostsLine, osFamily: w.pool.osFamily, restartCommand: n.restartCommand });
          this.writeState(state);
          if (cp && kube) {
            const ip = `${cp.net.prefix}.${10 + i}`;
            n.attachNetwork(cp.net.bridge, `${cp.net.bridge.slice(0, 11)}n${i}`, ip, cp.gateway);
            await step(`start kubelet on ${w.name} (${ip})`, () => startKubelet(n, cp, { name: w.name, ip, pool: w.pool.name, kubeletBin: kube.kubelet }));
          }
        } else {
          const machine = `gve2e-${this.spec.name}-${w.name}`.slice(0, 64);
          const n = await step(`start node ${w.name} (pool ${w.pool.name}, systemd-nspawn)`, () =>
            NspawnNode.start({ name: machine, stateDir: dir, rootfsTarball: rootfs!, sshPort, authorizedKey: pub, onProgress: (m) => log('debug', m) }),
          );
          state.nodes.push({ name: w.name, pool: w.pool.name, kind: 'systemd', stateDir: dir, sshPort, knownHostsLine: n.knownHostsLine, osFamily: w.pool.osFamily, pid: n.pid, machine });
        }
        this.writeState(state);
        writeFileSync(this.knownHostsPath, state.nodes.map((n) => n.knownHostsLine).join('\n') + '\n', { mode: 0o600 });
      }
      return state.nodes.map((n) => this.toNodeConfig(n));
    } catch (e) {
      log('error', `bringing up cluster "${this.spec.name}" failed; removing what was made`);
      await this.down().catch(() => undefined);
      if (e instanceof InfrastructureError) throw e;
      const msg = (e as Error).message;
      // A full disk is the state directory's problem, not the nodes': say where (a write's own error has no path).
      if ((e as NodeJS.ErrnoException).code === 'ENOSPC' || /no space left on device/i.test(msg)) {
        throw new InfrastructureError(`local cluster: no space left in the state directory ${this.dir} (ENOSPC): ${msg.trim().split('\n').slice(-1)[0]}`, { cause: e });
      }
      throw new InfrastructureError(`local cluster: ${msg}`, { cause: e });
    }
  }

  async down(): Promise<void> {
    // Its nodes/ and control-plane/ would otherwise be taken for ours.
    this.state.checkOwnership();
    let state: State | undefined;
    try {
      state = this.readState();
    } catch (e) {
      // Another provider's record is not ours to act on; only a file cut short falls through.
      if (!(e instanceof SyntaxError)) throw e;
    }
    // The state file is written after each node starts; a write that failed (a full disk) leaves a
    // started node out of it. The host nodes' own records under nodes/ still say what to stop.
    const nodesDir = join(this.dir, 'nodes');
    const recorded = new Set((state?.nodes ?? []).map((n) => n.stateDir));
    const unrecorded = (existsSync(nodesDir) ? readdirSync(nodesDir).map((d) => join(nodesDir, d)) : []).filter((d) => !recorded.has(d));
    const nodes: NodeRecord[] = [
      ...(state?.nodes ?? []),
      ...unrecorded.map((d) => ({ name: basename(d), pool: '', kind: 'host' as const, stateDir: d, sshPort: 0, knownHostsLine: '', osFamily: 'auto' })),
    ];
    for (const n of nodes) {
      await step(`stop node ${n.name}`, async () => {
        if (n.kind === 'host') {
          const h = HostNode.attach(n.stateDir);
          if (h) await h.stop();
        } else if (n.pid && n.machine) {
          await stopRecordedNspawn({ pid: n.pid, name: n.machine, stateDir: n.stateDir });
        }
        rmSync(n.stateDir, { recursive: true, force: true });
      });
    }
    if (existsSync(join(this.dir, 'control-plane'))) await step('stop the Kubernetes control plane', async () => ControlPlane.stop(this.dir));
    this.state.remove();
  }
}

export const local = defineProvider<LocalCluster>({
  provider: 'local',
  schema,
  check(c, cfg, issue) {
    // Node names derive from pool names (<pool>-<n>): a repeated pool would make two nodes one.
    checkPoolList(c.pools, cfg.gvisor.pools, issue);
    c.pools.forEach((p, i) => {
      if (cfg.gvisor.pools.includes(p.name) && p.kind === 'systemd') {
        issue(['cluster', 'pools', i, 'kind'], 'a gVisor pool of the local provider must be kind "host": the systemd node runs Debian\'s containerd 1.6, which cannot drive the current runsc shim');
      }
    });
  },
  resolvePaths(c, paths) {
    if (c.stateDir) c.stateDir = paths.path(c.stateDir);
    if (c.kubernetesBinDir) c.kubernetesBinDir = paths.path(c.kubernetesBinDir);
  },
  capabilities,
  poolNames: (c) => c.pools.map((p) => p.name),
  /** The manifest's worker pools become host pools (gVisor ones included); systemd pools it does not name stay. */
  applyManifest(c, spec) {
    const systemd = c.pools.filter((p) => p.kind === 'systemd' && !spec.allPools.includes(p.name));
    const others = spec.allPools.length > spec.pools.length ? spec.allPools : [...spec.allPools, 'plain'];
    return { ...c, pools: [...others.map((name) => ({ name, nodes: 1, kind: 'host' as const, osFamily: 'auto' as const })), ...systemd] };
  },
  forRepro: (c) => ({ ...c, kubernetes: true }),
  create: (cfg) => new LocalProvider(cfg),
});
