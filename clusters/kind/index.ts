import { chmodSync, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { buildKind, cacheRoot } from '../../harness/binaries.ts';
import { type Config, type NodeConfig, absolutePath, configPath, dnsLabel, dnsName, duration, durationMs, labelValue, nodeConfig } from '../../harness/config.ts';
import { InfrastructureError } from '../../harness/errors.ts';
import { buildTestImage, type TestImage } from '../../harness/image.ts';
import { log, step } from '../../harness/log.ts';
import { clusterLogsDir } from '../../harness/rundir.ts';
import { defaultStateDir, StateFile } from '../../harness/state.ts';
import { KIND_NODE_IMAGE, KIND_VERSION } from '../../harness/versions.ts';
import { type CommandResult, runCommand } from '../../harness/process.ts';
import { BaseProvider } from '../common/base.ts';
import { checkPoolList } from '../common/pools.ts';
import { tool, which } from '../common/tools.ts';
import { defineProvider, type Finding } from '../provider.ts';
import { kindWorkers, renderKindConfig, type KindWorker } from './config.ts';
import { layPodNetwork } from './network.ts';
import { type DockerCli, dockerCliWith, ensureLocalNodeImage, LOCAL_IMAGE_NAMES, LOCAL_NODE_IMAGE } from './node-image.ts';
import { mustExec, openNode } from '../../harness/node.ts';

/** kind v1alpha4 Mount (the fields kind accepts), for cluster.extraMounts. */
const kindMount = z
  .object({
    hostPath: configPath,
    containerPath: absolutePath,
    readOnly: z.boolean().optional(),
    propagation: z.enum(['None', 'HostToContainer', 'Bidirectional']).optional(),
  })
  .strict();

const schema = z
  .object({
    /** "kind": a kind cluster (Kubernetes in Docker containers), made with the kind CLI; needs a running Docker engine. */
    provider: z.literal('kind'),
    /** kind cluster name; the node containers are <name>-control-plane, <name>-worker, <name>-worker2, … */
    name: dnsName.default('gvisor-e2e'),
    stateDir: configPath.optional(),
    /**
     * The kindest/node image every node boots (default: the one the pinned kind release publishes, by
     * digest; harness/versions.ts), or `local`: an image the harness makes from pinned sources on this
     * machine, for hosts that cannot pull (clusters/kind/node-image.ts).
     */
    nodeImage: z.string().min(1).default(KIND_NODE_IMAGE),
    /** kind's networking.apiServerAddress: where the API server is published on the Docker host (default 127.0.0.1). */
    apiServerAddress: z.ipv4().optional(),
    /** kind's networking.apiServerPort (default: a free port kind picks on the Docker host). */
    apiServerPort: z.number().int().min(1).max(65535).optional(),
    /** A kind binary to use; default: `kind` on PATH, else built from its Go module. */
    kindBinary: configPath.optional(),
    /** How long `kind create cluster --wait` waits for the control plane to be Ready. */
    wait: duration.default('5m'),
    pools: z
      .array(
        z
          .object({
            name: dnsLabel,
            nodes: z.number().int().min(1).max(16).default(1),
            /** Extra node labels for this pool's nodes. */
            labels: z.record(z.string(), labelValue).default({}),
          })
          .strict(),
      )
      .min(1),
    /**
     * kind's kubeadmConfigPatches, passed through (after the harness's own): e.g. a KubeletConfiguration
     * with `featureGates: {KubeletInUserNamespace: true}` when the Docker engine runs in a user namespace.
     */
    kubeadmConfigPatches: z.array(z.string().min(1)).default([]),
    /** Host directories mounted into every node container (kind extraMounts). */
    extraMounts: z.array(kindMount).default([]),
  })
  .strict();
export type KindCluster = z.infer<typeof schema>;

const CAPABILITIES = { kubernetesApi: true, installsNodes: true, cleansUpAfterRun: true, reshapesPools: true };

// A kind cluster: Kubernetes nodes as Docker containers, made and removed with the kind CLI.
// The harness writes kind's config (pools → labelled workers, the gVisor handler patch), lets
// kind create the cluster with its kubeconfig in our state dir, loads the locally built test
// image with `kind load`, and hands back the worker containers as `docker exec` nodes: the
// generic installer then puts runsc, its shim and runsc.toml there like on any other node.
// On a failed `up`, kind's own diagnostics (`kind export logs`) go to the reports dir first
// (`--retain` keeps kind from deleting the nodes itself before we could collect them).

export type { CommandResult };
/** Runs argv[0] with argv[1..]; never throws for a non-zero exit (tests inject a recorder). */
export type Runner = (argv: string[], opts?: { timeoutMs?: number }) => Promise<CommandResult>;

export const defaultRunner: Runner = runCommand;

/** kind's own error (from its "ERROR:" line on), without its progress lines and warnings. */
export function kindError(r: CommandResult): string {
  const out = r.stderr.trim() || r.stdout.trim();
  const at = out.indexOf('ERROR:');
  return (at >= 0 ? out.slice(at) : out).trim().slice(-1500);
}

function firstLine(r: CommandResult): string {
  return (r.stderr.trim() || r.stdout.trim()).split('\n').filter(Boolean).slice(-1)[0] ?? `exit ${r.code}`;
}

/** Whether a Docker engine answers (`docker info`), in the words a user needs when it does not. */
export async function dockerEngine(run: Runner = defaultRunner): Promise<{ ok: boolean; detail: string }> {
  const r = await run(['docker', 'info', '--format', '{{.ServerVersion}}'], { timeoutMs: 20_000 });
  if (r.code === 0 && r.stdout.trim()) return { ok: true, detail: `Docker engine ${r.stdout.trim()}${process.env.DOCKER_HOST ? ` at ${process.env.DOCKER_HOST}` : ''}` };
  const why = r.code === 127 && /ENOENT/.test(r.stderr) ? 'the docker CLI is not installed' : firstLine(r);
  return { ok: false, detail: `no Docker engine is running (docker info: ${why}); the kind provider needs one: start dockerd or use provider local` };
}

/** The kind binary: the configured one, else `kind` on PATH, else built from its Go module (cached). */
export async function kindBinary(spec: KindCluster, run: Runner = defaultRunner): Promise<string> {
  if (spec.kindBinary) return spec.kindBinary;
  const r = await run(['sh', '-c', 'command -v kind']);
  if (r.code === 0 && r.stdout.trim()) return r.stdout.trim();
  return buildKind(KIND_VERSION);
}

/** Where kind comes from, without building it (for doctor). */
export function kindBinarySource(spec: KindCluster, onPath: string | undefined): string {
  if (spec.kindBinary) return spec.kindBinary;
  if (onPath) return onPath;
  const cached = join(cacheRoot(), 'kind', KIND_VERSION, 'kind');
  return existsSync(cached) ? cached : `not built yet: built from sigs.k8s.io/kind@${KIND_VERSION} on first use (needs go)`;
}

interface State {
  /** Kept for state files read by older versions (the owner marker says the same). */
  provider: 'kind';
  cluster: string;
  kubeconfig: string;
  nodes: KindWorker[];
  /** The local node image, when this harness put it into the engine (down removes it). */
  addedImage?: string;
  /** kind's Docker network, when it did not exist before this cluster (kind itself never removes it). */
  addedNetwork?: string;
}

/** The Docker network kind puts its nodes on (sigs.k8s.io/kind pkg/cluster/internal/providers/docker/network.go). */
const KIND_NETWORK = process.env.KIND_EXPERIMENTAL_DOCKER_NETWORK || 'kind';

export interface KindProviderOptions {
  run?: Runner;
  /** The kind binary (tests); default: see kindBinary(). */
  kind?: string;
  testImage?: () => Promise<TestImage>;
}

export class KindProvider extends BaseProvider<KindCluster> {
  private readonly run: Runner;
  /** The docker CLI through the same runner. */
  private readonly docker: DockerCli;
  private kindBin?: string;
  private readonly state: StateFile<State>;

  constructor(
    cfg: Config & { cluster: KindCluster },
    private readonly opts: KindProviderOptions = {},
  ) {
    const stateDir = cfg.cluster.stateDir ?? defaultStateDir(cfg.cluster.name);
    super(cfg, CAPABILITIES, stateDir);
    this.state = new StateFile<State>(stateDir, { provider: 'kind', cluster: cfg.cluster.name }, (s) => s.provider === 'kind');
    this.run = opts.run ?? defaultRunner;
    this.docker = dockerCliWith(this.run);
    this.kindBin = opts.kind;
  }

  private get dir(): string {
    return this.state.dir;
  }
  private get stateFile(): string {
    return this.state.file;
  }
  private readState(): State | undefined {
    return this.state.read();
  }

  override async doctor(): Promise<Finding[]> {
    const f: Finding[] = [tool('docker', 'docker.io', 'kind drives a Docker engine')];
    const engine = await dockerEngine(this.run);
    f.push({ check: 'Docker engine (docker info)', ok: engine.ok, detail: engine.detail, fix: engine.ok ? undefined : 'start dockerd (apt-get install docker.io), set DOCKER_HOST, or use provider local' });
    f.push({ check: 'kind CLI', ok: true, detail: kindBinarySource(this.spec, which('kind')) });
    if (this.spec.nodeImage === LOCAL_NODE_IMAGE) {
      const cached = existsSync(join(cacheRoot(), 'kind-node')) && readdirSync(join(cacheRoot(), 'kind-node')).some((f) => f.endsWith('.tar'));
      f.push({ check: 'node image local', ok: true, detail: cached ? `made here from pinned sources; cached in ${join(cacheRoot(), 'kind-node')}` : 'made here from pinned sources on first `up` (needs go, a C compiler, apt-get download)' });
    } else if (engine.ok) {
      const img = (await this.run(['docker', 'image', 'inspect', '--format', '{{.Id}}', this.spec.nodeImage], { timeoutMs: 20_000 })).stdout.trim();
      f.push({ check: `node image ${this.spec.nodeImage}`, ok: true, detail: img ? `present (${img.slice(0, 19)})` : 'not in the engine: kind will try to pull it' });
    }
    return f;
  }

  override async warm(): Promise<void> {
    await kindBinary(this.spec, this.run);
  }

  override kubeconfig(): string | undefined {
    return this.readState()?.kubeconfig;
  }

  private async kindCmd(args: string[], timeoutMs = 120_000): Promise<CommandResult> {
    this.kindBin ??= await kindBinary(this.spec, this.run);
    log('debug', `$ kind ${args.join(' ')}`);
    return this.run([this.kindBin, ...args], { timeoutMs });
  }

  private async mustKind(args: string[], timeoutMs?: number): Promise<string> {
    const r = await this.kindCmd(args, timeoutMs);
    if (r.code !== 0) throw new InfrastructureError(`kind ${args.slice(0, 2).join(' ')} (cluster "${this.spec.name}") exited ${r.code}: ${kindError(r)}`);
    return r.stdout;
  }


  private async requireEngine(): Promise<void> {
    const e = await dockerEngine(this.run);
    if (!e.ok) throw new InfrastructureError(e.detail);
  }

  private async clusterExists(): Promise<boolean> {
    return (await this.mustKind(['get', 'clusters'])).split('\n').includes(this.spec.name);
  }

  private async liveNodes(): Promise<string[]> {
    return (await this.mustKind(['get', 'nodes', '--name', this.spec.name])).split('\n').map((s) => s.trim()).filter(Boolean);
  }

  private toNodeConfig(w: KindWorker): NodeConfig {
    // kind nodes run systemd as PID 1 with a containerd unit: the default restart command applies.
    return nodeConfig({ name: w.name, pool: w.pool, access: { type: 'docker', container: w.name } });
  }

  async up(): Promise<NodeConfig[]> {
    await this.requireEngine();
    const workers = kindWorkers(this.spec, this.cfg.gvisor.pools);
    const existing = this.readState();
    if (existing && (await this.clusterExists())) {
      const live = await this.liveNodes();
      const same = existing.nodes.length === workers.length && workers.every((w, i) => existing.nodes[i]?.name === w.name && existing.nodes[i]?.pool === w.pool);
      if (same && workers.every((w) => live.includes(w.name))) {
        log('info', `kind cluster "${this.spec.name}" is up (${workers.length} workers, state ${this.dir})`);
        return workers.map((w) => this.toNodeConfig(w));
      }
      log('info', `kind cluster "${this.spec.name}" differs from the config: removing it first`);
      await this.down();
    } else if (await this.clusterExists()) {
      // A cluster of that name that we have no record of is not ours to replace.
      throw new InfrastructureError(`a kind cluster "${this.spec.name}" exists that gvisor-e2e did not record (no ${this.stateFile}): delete it (\`kind delete cluster --name ${this.spec.name}\`) or pick another cluster.name`);
    }

    const configFile = join(this.dir, 'kind-config.yaml');
    const kubeconfig = join(this.dir, 'kubeconfig');
    // Recorded before anything is made (the directory's owner marker too), so that `down` after a
    // crash still deletes the cluster and removes only a directory that holds this record.
    const state: State = { provider: 'kind', cluster: this.spec.name, kubeconfig, nodes: workers };
    this.state.write(state);
    // kind writes credentials into the kubeconfig: create it private before kind fills it.
    writeFileSync(kubeconfig, '', { mode: 0o600 });
    try {
      const local = this.spec.nodeImage === LOCAL_NODE_IMAGE;
      const image = local ? await ensureLocalNodeImage(this.docker, (ref) => this.state.write({ ...state, addedImage: (state.addedImage = ref) })) : this.spec.nodeImage;
      if (!(await this.docker(['network', 'inspect', KIND_NETWORK], 20_000).then(() => true, () => false))) this.state.write({ ...state, addedNetwork: (state.addedNetwork = KIND_NETWORK) });
      const cgroupV1 = (await this.docker(['info', '--format', '{{.CgroupVersion}}'], 20_000)).trim() === '1';
      writeFileSync(configFile, renderKindConfig(this.cfg, { image, cgroupV1, localImage: local ? { etcdTag: LOCAL_IMAGE_NAMES.etcdTag } : undefined }));
      const wait = this.spec.wait;
      // With the local image the nodes cannot be Ready before the harness lays pod networking: no --wait then.
      await step(`kind create cluster "${this.spec.name}" (${workers.length} workers, ${image})`, () =>
        this.mustKind(['create', 'cluster', '--name', this.spec.name, '--config', configFile, '--kubeconfig', kubeconfig, ...(local ? [] : ['--wait', wait]), '--retain'], durationMs(wait) + 300_000),
      );
      chmodSync(kubeconfig, 0o600);
      const live = await this.liveNodes();
      const missing = workers.filter((w) => !live.includes(w.name));
      if (missing.length) throw new InfrastructureError(`kind made nodes ${live.join(', ')}, not the expected ${missing.map((w) => w.name).join(', ')}`);
      const access = (name: string) => openNode(nodeConfig({ name, pool: 'kind', access: { type: 'docker', container: name } }));
      if (cgroupV1) {
        // See runcCgroupfsPatch (config.ts): with the cgroupfs driver the kubelet uses kind's /kubelet
        // submounts only; the /kubelet.slice ones, left beside them, make runsc fail to find its own
        // cgroup. Lazily unmounted: kind's entrypoint may still hold one.
        await step(`unmount kind's unused /kubelet.slice cgroup v1 submounts on ${live.length} nodes (they break runsc)`, () =>
          Promise.all(live.map((n) => mustExec(access(n), 'for m in $(findmnt -lun -o TARGET -t cgroup | grep "/kubelet.slice$"); do umount -l "$m"; done'))),
        );
      }
      if (local) {
        const cp = access(`${this.spec.name}-control-plane`);
        await step(`lay pod networking on ${live.length} kind nodes (kindnetd's ptp config and routes) and wait for Ready`, () =>
          layPodNetwork(cp, live.map(access), durationMs(wait)),
        );
      }
      const testImage = await (this.opts.testImage ?? (() => step('build the busybox test image', () => buildTestImage())))();
      await step(`kind load image-archive (test image) into ${workers.length} workers`, () =>
        this.mustKind(['load', 'image-archive', testImage.archive, '--name', this.spec.name, '--nodes', workers.map((w) => w.name).join(',')], 300_000),
      );
    } catch (e) {
      log('error', `bringing up kind cluster "${this.spec.name}" failed; exporting its logs, then deleting it`);
      const logs = (await this.clusterExists().catch(() => true))
        ? await this.collectLogs(this.cfg.reportsDir).catch((x: Error) => `none: kind export logs failed: ${x.message}`)
        : 'none: kind made no node';
      await this.down().catch((x: Error) => log('error', `deleting kind cluster "${this.spec.name}" failed: ${x.message}`));
      throw new InfrastructureError(`kind cluster "${this.spec.name}": ${(e as Error).message} (kind logs: ${logs})`, { cause: e });
    }
    return workers.map((w) => this.toNodeConfig(w));
  }

  /** `kind export logs` (journal, kubelet, containerd per node) into the reports dir; returns the directory. */
  override async collectLogs(reportsDir: string): Promise<string> {
    const dir = clusterLogsDir(reportsDir, 'kind', this.spec.name);
    mkdirSync(dir, { recursive: true });
    const r = await this.kindCmd(['export', 'logs', dir, '--name', this.spec.name], 300_000);
    if (r.code === 0) return dir;
    // kind fails the export when one command of many failed (a node without crictl, say): keep what it got.
    if (readdirSync(dir).length > 0) return `${dir} (partial: ${kindError(r).split('\n')[0]!.slice(0, 300)})`;
    rmSync(dir, { recursive: true, force: true });
    throw new InfrastructureError(`kind export logs: ${kindError(r)}`);
  }

  async down(): Promise<void> {
    const state = this.readState();
    // Only a cluster this harness recorded is deleted (the record is written before kind creates it).
    if (!state) return;
    const engine = await dockerEngine(this.run);
    if (!engine.ok) {
      // Without an engine there are no node containers to delete; a recorded cluster cannot be checked.
      throw new InfrastructureError(`${engine.detail} (cluster "${this.spec.name}" is recorded in ${this.dir}; run down again with the engine up)`);
    }
    // kind deletes an absent cluster without error, so this is safe to repeat.
    await step(`kind delete cluster "${this.spec.name}"`, () => this.mustKind(['delete', 'cluster', '--name', this.spec.name, '--kubeconfig', state.kubeconfig]));
    // What this cluster added to the engine besides its nodes: kept (and said) while something else still uses it.
    if (state.addedNetwork) {
      await this.docker(['network', 'rm', state.addedNetwork], 60_000).then(
        () => log('info', `removed Docker network "${state.addedNetwork}" (made for kind cluster "${this.spec.name}")`),
        (e: Error) => log('warn', `kept Docker network "${state.addedNetwork}": ${/active endpoints|in use/.test(e.message) ? 'other containers still use it' : e.message}`),
      );
    }
    if (state.addedImage) {
      await this.docker(['rmi', state.addedImage], 120_000).then(
        () => log('info', `removed node image ${state.addedImage} from the engine (cached in ${join(cacheRoot(), 'kind-node')})`),
        (e: Error) => log('warn', `kept node image ${state.addedImage}: ${/being used|conflict/i.test(e.message) ? 'a container still uses it' : e.message}`),
      );
    }
    this.state.remove();
  }
}

export const kind = defineProvider<KindCluster>({
  provider: 'kind',
  schema,
  check: (c, cfg, issue) => checkPoolList(c.pools, cfg.gvisor.pools, issue),
  resolvePaths(c, paths) {
    if (c.stateDir) c.stateDir = paths.path(c.stateDir);
    if (c.kindBinary?.includes('/')) c.kindBinary = paths.path(c.kindBinary);
    for (const m of c.extraMounts) m.hostPath = paths.path(m.hostPath);
  },
  capabilities: () => CAPABILITIES,
  poolNames: (c) => c.pools.map((p) => p.name),
  // kind makes workers per pool, so a manifest's pools become the cluster's: a pool the config
  // already has keeps its size and labels, a new one gets one worker; a pool without gVisor is kept
  // or added (plain) so that the scheduling suite has somewhere else to look.
  applyManifest(c, spec) {
    const names = spec.allPools.length > spec.pools.length ? spec.allPools : [...spec.allPools, 'plain'];
    return { ...c, pools: names.map((name) => c.pools.find((p) => p.name === name) ?? { name, nodes: 1, labels: {} }) };
  },
  forRepro: (c) => c,
  create: (cfg) => new KindProvider(cfg),
});
