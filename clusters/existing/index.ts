// Types only: the Kubernetes client (~130 MB under tsx) is loaded when a verb talks to the API.
import type * as k8s from '@kubernetes/client-node';
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { join } from 'node:path';
import { z } from 'zod';
import { type Config, type NodeConfig, dnsLabel, nodeConfig, nodeSchema } from '../../harness/config.ts';
import { ConfigError, InfrastructureError } from '../../harness/errors.ts';
import { uninstallNode } from '../../harness/installer.ts';
import { addKubernetesObjects, removeKubernetesObjects, type ObjectsRecord } from '../common/objects.ts';
import { POOL_LABEL } from '../../harness/labels.ts';
import { log, step } from '../../harness/log.ts';
import { buildTestImage } from '../../harness/image.ts';
import { type NodeAccess, openNode, sh } from '../../harness/node.ts';
import { registerSecret } from '../../harness/redact.ts';
import { MANAGED_LABEL, RUN_LABEL } from '../../harness/sandbox.ts';
import { defaultStateDir, StateFile } from '../../harness/state.ts';
import { BaseProvider } from '../common/base.ts';
import { doctorNodes } from '../common/hosts.ts';
import { gvisorPoolsAmong } from '../common/pools.ts';
import { defineProvider, type Finding, type Secrets } from '../provider.ts';

let k8sLoaded: typeof k8s | undefined;
/** The Kubernetes client, loaded on first use (every verb that talks to the API awaits this first). */
async function loadK8s(): Promise<typeof k8s> {
  return (k8sLoaded ??= await import('@kubernetes/client-node'));
}
/** The same, synchronously, for kubeconfig() called before any API verb (require of ESM: Node >= 20.19, or tsx). */
function k8sNow(): typeof k8s {
  return (k8sLoaded ??= createRequire(import.meta.url)('@kubernetes/client-node') as typeof k8s);
}
/** harness/kube.ts's retrying call, loaded with the client it wraps. */
async function api<T>(what: string, fn: () => Promise<T>): Promise<T> {
  await loadK8s();
  return (await import('../../harness/kube.ts')).api(what, fn);
}

// A Kubernetes cluster the harness did not create — typically a Gardener shoot that already runs
// the runtime-gvisor extension. `up` only reads it (the nodes of each worker pool, from the API);
// `down` removes only what the harness made: the suites' namespaces (they carry the run label),
// and the RuntimeClass, node labels and node files the harness itself created. Those are recorded
// in <stateDir>/state.json the moment they exist (a RuntimeClass by uid), so a RuntimeClass or a
// label that was there before is never touched, and `down` after a crash still knows what to undo.
//
// Nodes listed in cluster.nodes are reached over SSH, like the `nodes` provider. The others are
// reached through the API only: the suites' pods still land on them (as pods pinned to the node),
// but a check that needs the node's own files is reported as skipped, naming why. We deliberately
// do not start a privileged hostPath pod (`kubectl debug node`-style) there: on a customer's
// cluster that is a privileged workload the PodSecurity admission of a shoot may refuse, and a
// harness that tests sandboxing should not quietly escape it.

/** Marks objects this harness created on a cluster it does not own (the state file is what counts). */
export { CREATED_BY_ANNOTATION } from '../common/objects.ts';

const schema = z
  .object({
    /** "existing": a Kubernetes cluster the harness did not create (a Gardener shoot); down removes only what the harness made. */
    provider: z.literal('existing'),
    name: dnsLabel.default('existing'),
    /** Path of the kubeconfig. Its contents are a secret: never logged, redacted from every report. */
    kubeconfig: z.string().min(1),
    /** The kubeconfig context to use (default: its current-context). */
    context: z.string().min(1).optional(),
    /** The worker pools and how to find their nodes (default: the gVisor pools, by Gardener's pool label). */
    pools: z
      .array(
        z
          .object({
            name: z.string().min(1),
            /** A label selector; default `worker.gardener.cloud/pool=<name>`. */
            selector: z.string().min(1).optional(),
          })
          .strict(),
      )
      .min(1)
      .optional(),
    /** Node-level access (SSH) for file checks and installing; nodes not listed are reached through the API only. */
    nodes: z.array(nodeSchema.partial({ pool: true })).default([]),
    /** Install gVisor (node files over SSH, RuntimeClass, node labels), or only test what is there (a shoot with the extension). */
    install: z.boolean().default(false),
    /** Where the record of what the harness created lives (default ~/.local/state/gvisor-e2e/<name>). */
    stateDir: z.string().optional(),
  })
  .strict();
export type ExistingCluster = z.infer<typeof schema>;

const capabilities = (c: ExistingCluster) => ({ kubernetesApi: true, installsNodes: c.install, cleansUpAfterRun: true, reshapesPools: false });

interface State extends ObjectsRecord {
  cluster: string;
  /** Nodes whose files `install` changed (over SSH); `down` undoes that install on them. */
  installedNodes: string[];
  /** Nodes where the harness imported its test image (removed again by down). */
  imageNodes?: string[];
  /** The cluster this record is about (its API server and the context): another config's down must not use it. */
  identity?: ClusterIdentity;
  /** Runs whose suites' namespaces down removes (another harness's runs on the same cluster are not ours). */
  runs?: string[];
}

interface ClusterIdentity {
  server: string;
  context: string;
}

/**
 * The cluster a kubeconfig's context points at, read without loading the Kubernetes client, or
 * undefined when the file does not say (load() then reports what is wrong with it).
 */
function identityOf(kubeconfig: string, context: string | undefined): ClusterIdentity | undefined {
  try {
    const doc = parseYaml(readFileSync(kubeconfig, 'utf8')) as { 'current-context'?: string; contexts?: { name: string; context?: { cluster?: string } }[]; clusters?: { name: string; cluster?: { server?: string } }[] };
    const ctx = context ?? doc['current-context'];
    const cluster = doc.contexts?.find((c) => c.name === ctx)?.context?.cluster;
    const server = doc.clusters?.find((c) => c.name === cluster)?.cluster?.server;
    return ctx && server ? { server, context: ctx } : undefined;
  } catch {
    return undefined;
  }
}

export class ExistingProvider extends BaseProvider<ExistingCluster> {
  private readonly state: StateFile<State>;
  constructor(cfg: Config & { cluster: ExistingCluster }) {
    // Keyed by the cluster (API server and context), not only by name: two configs that keep the
    // default name "existing" for two clusters must not share, or delete, each other's record.
    const identity = identityOf(cfg.cluster.kubeconfig, cfg.cluster.context);
    const key = identity ? `-${createHash('sha256').update(`${identity.server}\n${identity.context}`).digest('hex').slice(0, 10)}` : '';
    const stateDir = cfg.cluster.stateDir ?? defaultStateDir(`${cfg.cluster.name}${key}`);
    super(cfg, capabilities(cfg.cluster), stateDir);
    this.identity = identity;
    this.state = new StateFile<State>(stateDir, { provider: 'existing', cluster: cfg.cluster.name }, (s) => Array.isArray(s.runtimeClasses));
  }
  private readonly identity: ClusterIdentity | undefined;

  private get dir(): string {
    return this.state.dir;
  }
  private readState(): State {
    const s = this.state.read();
    const id = this.identity;
    if (s?.identity && id && (s.identity.server !== id.server || s.identity.context !== id.context)) {
      throw new InfrastructureError(
        `${this.dir} records cluster ${s.identity.server} (context "${s.identity.context}"), but this config points at ${id.server} (context "${id.context}"): run down with that cluster's config, or set another cluster.stateDir`,
      );
    }
    return s ?? { cluster: this.spec.name, runtimeClasses: [], nodeLabels: [], installedNodes: [] };
  }
  private writeState(s: State): void {
    this.state.write({ ...s, ...(this.identity ? { identity: this.identity } : {}) });
  }

  override recordRun(runId: string): void {
    const s = this.readState();
    (s.runs ??= []).push(runId);
    this.writeState(s);
  }

  override secrets(): Secrets {
    return { keyFiles: this.spec.nodes.flatMap((n) => (n.access.type === 'ssh' ? [n.access.privateKeyPath] : [])), kubeconfigs: [this.spec.kubeconfig] };
  }

  async doctor(): Promise<Finding[]> {
    // The API first: it says which nodes there are; only those with SSH access are checked further.
    try {
      const all = await this.up();
      return [{ check: 'Kubernetes API: nodes of the pools', ok: true, detail: all.map((n) => `${n.name} (${n.pool})`).join(', ') }, ...(await doctorNodes(all.filter((n) => n.access.type !== 'api')))];
    } catch (e) {
      return [{ check: 'Kubernetes API: nodes of the pools', ok: false, detail: (e as Error).message, fix: 'check cluster.kubeconfig, cluster.context and cluster.pools' }];
    }
  }
  private get contextKubeconfig(): string {
    return join(this.dir, 'kubeconfig');
  }

  /** Loads the user's kubeconfig (never echoing it) and registers its credentials for redaction. */
  private load(): k8s.KubeConfig {
    const kc = new (k8sNow().KubeConfig)();
    try {
      kc.loadFromFile(this.spec.kubeconfig);
    } catch (e) {
      // The parser's message may quote the file, which holds credentials: name only the kind of error.
      const code = (e as NodeJS.ErrnoException).code;
      throw new ConfigError('config', [{ path: 'cluster.kubeconfig', message: `${this.spec.kubeconfig} ${code ? `cannot be read (${code})` : 'is not a valid kubeconfig'}` }]);
    }
    for (const u of kc.getUsers()) {
      registerSecret(u.token);
      registerSecret(u.password);
      registerSecret(u.keyData);
      registerSecret(u.certData);
    }
    if (this.spec.context) {
      const names = kc.getContexts().map((c) => c.name);
      if (!names.includes(this.spec.context)) {
        throw new ConfigError('config', [{ path: 'cluster.context', message: `no context "${this.spec.context}" in ${this.spec.kubeconfig} (contexts: ${names.join(', ') || 'none'})` }]);
      }
      kc.setCurrentContext(this.spec.context);
    }
    if (!kc.getCurrentCluster()) throw new ConfigError('config', [{ path: 'cluster.kubeconfig', message: `${this.spec.kubeconfig} has no current context with a cluster; set cluster.context` }]);
    return kc;
  }

  /**
   * The kubeconfig the rest of the harness uses. With `context`, a copy whose current-context is
   * that one (0600, in the state dir, removed by down): every consumer then loads a plain path.
   */
  override kubeconfig(): string {
    if (!this.spec.context) return this.spec.kubeconfig;
    const kc = this.load();
    // The record first: `down` removes the state directory (and this copy) only while it holds it.
    this.state.claim(this.readState());
    writeFileSync(this.contextKubeconfig, kc.exportConfig(), { mode: 0o600 });
    return this.contextKubeconfig;
  }

  private async core(): Promise<k8s.CoreV1Api> {
    const { CoreV1Api } = await loadK8s();
    return this.load().makeApiClient(CoreV1Api);
  }

  async up(): Promise<NodeConfig[]> {
    const core = await this.core();
    const pools = this.spec.pools ?? this.cfg.gvisor.pools.map((name) => ({ name, selector: undefined }));
    const poolOf = new Map<string, string>();
    const found: k8s.V1Node[] = [];
    for (const [i, p] of pools.entries()) {
      const selector = p.selector ?? `${POOL_LABEL}=${p.name}`;
      const list = await api(`listing nodes of pool ${p.name} (${selector})`, () => core.listNode({ labelSelector: selector }));
      const where = this.spec.pools ? `cluster.pools[${i}]${p.selector ? '.selector' : ''}` : `gvisor.pools[${i}]`;
      if (list.items.length === 0) throw new ConfigError('config', [{ path: where, message: `no node of the cluster matches "${selector}" (pool "${p.name}")` }]);
      for (const n of list.items) {
        const name = n.metadata!.name!;
        const other = poolOf.get(name);
        if (other) throw new ConfigError('config', [{ path: where, message: `node ${name} matches both pool "${other}" and pool "${p.name}"; make the selectors disjoint` }]);
        poolOf.set(name, p.name);
        found.push(n);
      }
    }
    this.spec.nodes.forEach((n, i) => {
      const pool = poolOf.get(n.name);
      if (!pool) throw new ConfigError('config', [{ path: `cluster.nodes[${i}].name`, message: `no node "${n.name}" in the pools (${[...poolOf.keys()].join(', ')})` }]);
      if (n.pool !== undefined && n.pool !== pool) throw new ConfigError('config', [{ path: `cluster.nodes[${i}].pool`, message: `node ${n.name} is in pool "${pool}" (by its labels), not "${n.pool}"` }]);
    });
    const nodes = found.map((k) => {
      const name = k.metadata!.name!;
      const pool = poolOf.get(name)!;
      const ssh = this.spec.nodes.find((n) => n.name === name);
      return ssh ? nodeConfig({ ...ssh, pool }) : nodeConfig({ name, pool, access: { type: 'api' } });
    });
    for (const n of nodes) log('info', `  ${n.name}: pool ${n.pool}, ${n.access.type === 'ssh' ? 'SSH' : 'API only (node-level file checks are skipped)'}`);
    return nodes;
  }

  /** Notes that `install` changed files on a node or imported the test image there (down undoes it there, and only there). */
  override recordOnNode(node: string, what: 'files' | 'image'): void {
    const s = this.readState();
    const list = what === 'files' ? s.installedNodes : (s.imageNodes ??= []);
    if (!list.includes(node)) list.push(node);
    this.writeState(s);
  }

  /**
   * What the extension leaves in the cluster: the RuntimeClass and the node label on the gVisor
   * pool. Creates only what is missing, and records it; what exists is tested as it is.
   */
  override async installKubernetesObjects(nodes: NodeConfig[]): Promise<void> {
    const state = this.readState();
    await addKubernetesObjects(this.kubeconfig(), this.cfg, nodes, state, () => this.writeState(state), this.spec.name);
  }

  /** Runs fn over SSH on a node of cluster.nodes (down's undo), or says what is left where there is no access. */
  /** Whether it ran: false where the node has no SSH access in the config, or cannot be reached. */
  private async onNode(name: string, what: string, fn: (node: NodeAccess, n: NodeConfig) => Promise<void>): Promise<boolean> {
    const spec = this.spec.nodes.find((x) => x.name === name);
    if (!spec) {
      log('warn', `${what} on node ${name} stay: it is no longer in cluster.nodes; run down with its SSH access to undo that`);
      return false;
    }
    const n = nodeConfig({ ...spec, pool: spec.pool ?? 'unknown' });
    const node = openNode(n);
    try {
      await fn(node, n);
      return true;
    } catch (e) {
      log('warn', `${what} on node ${name} stay: ${(e as Error).message}`);
      return false;
    } finally {
      await node.close();
    }
  }

  async down(): Promise<void> {
    const core = await this.core();
    const state = this.readState();
    // The suites' namespaces of this record's runs: another harness's run on the same cluster keeps its own.
    const runs = new Set(state.runs ?? []);
    const nss = runs.size ? await api('listing the harness namespaces', () => core.listNamespace({ labelSelector: `${RUN_LABEL},${MANAGED_LABEL}=true` })) : { items: [] };
    for (const ns of nss.items.filter((x) => x.status?.phase !== 'Terminating' && runs.has(x.metadata?.labels?.[RUN_LABEL] ?? ''))) {
      await api(`deleting namespace ${ns.metadata!.name}`, () => core.deleteNamespace({ name: ns.metadata!.name! })).catch(notFound);
      log('info', `deleted namespace ${ns.metadata!.name}`);
    }
    state.runs = [];
    this.writeState(state);
    await removeKubernetesObjects(this.kubeconfig(), state, () => this.writeState(state));
    for (const name of [...(state.imageNodes ?? [])]) {
      const done = await this.onNode(name, 'the test image', async (node, n) => {
        const img = await buildTestImage();
        await node.exec(`ctr --address ${sh(n.paths.containerdSocket)} -n k8s.io images rm ${sh(img.image)} ${sh(img.pause)} ${sh(img.id)}`);
        log('info', `[${name}] removed the test image`);
      });
      if (!done) continue;
      state.imageNodes = state.imageNodes!.filter((x) => x !== name);
      this.writeState(state);
    }
    for (const name of [...state.installedNodes]) {
      const done = await this.onNode(name, 'the files install changed', async (node) => {
        const undone = await step(`uninstall from ${name}`, () => uninstallNode(node, this.cfg));
        log('info', `[${name}] restored/removed: ${undone.join(', ') || 'nothing'}`);
      });
      if (!done) continue;
      state.installedNodes = state.installedNodes.filter((x) => x !== name);
      this.writeState(state);
    }
    // A node that could not be reached keeps its record: a later down with access undoes it.
    const left = [...new Set([...state.installedNodes, ...(state.imageNodes ?? [])])];
    if (left.length) throw new InfrastructureError(`down could not reach ${left.join(', ')}: their record stays in ${this.dir}; run down again with SSH access to them`);
    this.state.remove();
  }
}

function notFound(e: unknown): void {
  if (!/HTTP 404/.test((e as Error).message)) throw e;
}

/** key=value / key==value / key!=value / key / !key terms, comma-separated (kubectl's -l syntax without set-based terms). */
const LABEL_SELECTOR = /^\s*!?[A-Za-z0-9./_-]+(\s*(==?|!=)\s*[A-Za-z0-9._-]*)?(\s*,\s*!?[A-Za-z0-9./_-]+(\s*(==?|!=)\s*[A-Za-z0-9._-]*)?)*\s*$/;

export const existing = defineProvider<ExistingCluster>({
  provider: 'existing',
  schema,
  check(c, cfg, issue) {
    const gvisorPools = cfg.gvisor.pools;
    const pools = c.pools?.map((p) => p.name) ?? gvisorPools;
    if (c.pools) {
      gvisorPoolsAmong(pools, gvisorPools, issue);
      c.pools.forEach((p, i) => {
        if (pools.indexOf(p.name) !== i) issue(['cluster', 'pools', i, 'name'], `duplicate pool "${p.name}"`);
        if (p.selector !== undefined && !LABEL_SELECTOR.test(p.selector)) issue(['cluster', 'pools', i, 'selector'], `"${p.selector}" is not a label selector like "worker.gardener.cloud/pool=gvisor"`);
      });
    }
    const names = new Set<string>();
    c.nodes.forEach((n, i) => {
      if (n.access.type !== 'ssh') issue(['cluster', 'nodes', i, 'access', 'type'], `expected "ssh": an existing cluster's nodes are reached over SSH (or through the API when not listed)`);
      if (names.has(n.name)) issue(['cluster', 'nodes', i, 'name'], `duplicate node name "${n.name}"`);
      names.add(n.name);
      if (n.pool !== undefined && !pools.includes(n.pool)) issue(['cluster', 'nodes', i, 'pool'], `no pool "${n.pool}" (pools: ${pools.join(', ')})`);
    });
  },
  resolvePaths(c, paths) {
    c.kubeconfig = paths.path(c.kubeconfig);
    if (c.stateDir) c.stateDir = paths.path(c.stateDir);
    c.nodes.forEach((n, i) => {
      if (n.access.type === 'ssh') paths.keyFiles(n.access, `cluster.nodes[${i}].access`);
    });
  },
  capabilities,
  poolNames: (c) => c.pools?.map((p) => p.name) ?? [],
  /** An existing cluster's pools are found through the API; named pools must include the manifest's. */
  applyManifest(c, spec) {
    const named = c.pools?.map((p) => p.name);
    const missing = named ? spec.pools.filter((p) => !named.includes(p)) : [];
    if (missing.length) throw new ConfigError(spec.source, [{ path: 'workerPool', message: `cluster.pools of the config has no pool(s) ${missing.join(', ')}` }]);
    return c;
  },
  create: (cfg) => new ExistingProvider(cfg),
});
