import { accessSync, constants, readFileSync } from 'node:fs';
import { resolve, dirname } from 'node:path';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { ConfigError } from './errors.ts';
import { log } from './log.ts';
import { KIND_NODE_IMAGE } from './versions.ts';

// One YAML file describes the whole run. Unknown keys are errors (a typo must not silently
// change what is tested); the one deliberate exception is gVisor's configFlags, where we copy
// gardener-extension-runtime-gvisor: only `net-raw` ("true"/"false") is honoured, the rest is
// ignored — but we say so, where the extension stays silent.

const duration = z.string().regex(/^\d+(ms|s|m|h)$/, 'a duration like "30s", "5m" or "500ms"');

const sshAccess = z
  .object({
    type: z.literal('ssh'),
    host: z.string().min(1),
    port: z.number().int().min(1).max(65535).default(22),
    user: z.string().min(1).default('root'),
    privateKeyPath: z.string().min(1),
    /** Host key verification is mandatory: a known_hosts file or a pinned SHA256 fingerprint. */
    knownHostsPath: z.string().min(1).optional(),
    hostKeyFingerprint: z.string().regex(/^SHA256:[A-Za-z0-9+/]{43}$/, 'an OpenSSH fingerprint "SHA256:<43 base64 chars>"').optional(),
  })
  .strict()
  .refine((a) => a.knownHostsPath || a.hostKeyFingerprint, {
    message: 'set knownHostsPath or hostKeyFingerprint: host keys are always verified',
  });

const localAccess = z.object({ type: z.literal('local') }).strict();
const dockerAccess = z.object({ type: z.literal('docker'), container: z.string().min(1) }).strict();
/** A node of an existing cluster reached only through the Kubernetes API (set by the provider, not written by users). */
const apiAccess = z.object({ type: z.literal('api') }).strict();

export const OS_FAMILIES = ['auto', 'debian', 'ubuntu', 'flatcar', 'azurelinux', 'mariner', 'rhel', 'photon', 'other'] as const;

const nodePaths = z
  .object({
    containerdConfig: z.string().startsWith('/').default('/etc/containerd/config.toml'),
    containerdSocket: z.string().startsWith('/').default('/run/containerd/containerd.sock'),
    runscConfig: z.string().startsWith('/').default('/etc/containerd/runsc.toml'),
    systemdUnitDir: z.string().startsWith('/').default('/etc/systemd/system'),
    /** Where CRI container logs are written for the pods the suites start. */
    podLogDir: z.string().startsWith('/').default('/var/log/gvisor-e2e'),
    /** Scratch space on the node (image tarballs). */
    tmpDir: z.string().startsWith('/').default('/tmp'),
  })
  .strict();

const nodeSchema = z
  .object({
    name: z.string().regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'a DNS-1123 name'),
    pool: z.string().min(1),
    labels: z.record(z.string(), z.string()).default({}),
    access: z.discriminatedUnion('type', [sshAccess, localAccess, dockerAccess, apiAccess]),
    osFamily: z.enum(OS_FAMILIES).default('auto'),
    paths: nodePaths.default(nodePaths.parse({})),
    containerd: z
      .object({
        /** How to restart containerd after its config changed. Default: systemd. */
        restartCommand: z.string().min(1).default('systemctl daemon-reload && systemctl restart containerd'),
      })
      .strict()
      .default({ restartCommand: 'systemctl daemon-reload && systemctl restart containerd' }),
  })
  .strict();

/**
 * One host of a `vm` cluster: the SSH fields are the `nodes` provider's (same rules: a host key is
 * always verified), flattened beside what the provider needs to provision it.
 */
const vmHostSchema = z
  .object({
    name: z.string().regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'a DNS-1123 name'),
    pool: z.string().min(1),
    address: z.string().min(1),
    port: sshAccess.shape.port,
    user: sshAccess.shape.user,
    privateKeyPath: sshAccess.shape.privateKeyPath,
    knownHostsPath: sshAccess.shape.knownHostsPath,
    hostKeyFingerprint: sshAccess.shape.hostKeyFingerprint,
    osFamily: z.enum(OS_FAMILIES).default('auto'),
  })
  .strict()
  .refine((a) => a.knownHostsPath || a.hostKeyFingerprint, {
    message: 'set knownHostsPath or hostKeyFingerprint: host keys are always verified',
  });

const gvisorSource = z.discriminatedUnion('type', [
  /** Build runsc and its shim from the gvisor.dev/gvisor Go module (cached by version). */
  z.object({ type: z.literal('build') }).strict(),
  /** Use binaries from a directory on the harness host (runsc, containerd-shim-runsc-v1). */
  z.object({ type: z.literal('dir'), path: z.string().min(1) }).strict(),
  /** Download a dated release (yyyymmdd) or "latest" from gVisor's release bucket, sha512-checked. */
  z.object({ type: z.literal('release') }).strict(),
]);

const gvisorSchema = z
  .object({
    /** Worker pools whose nodes get gVisor (Gardener: the ContainerRuntime's workerPool). */
    pools: z.array(z.string().min(1)).min(1),
    /** CRI runtime handler. Gardener: "runsc"; image-builder: "gvisor". */
    handler: z.string().regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'a DNS-1123 label').default('runsc'),
    runtimeClassName: z.string().min(1).default('gvisor'),
    /** Gardener default /var/bin/containerruntimes; image-builder /usr/local/bin. */
    binaryPath: z.string().startsWith('/').default('/var/bin/containerruntimes'),
    /** "latest", a dated release "yyyymmdd" (image-builder's containerd_gvisor_version), or an exact version string. */
    version: z.string().min(1).default('latest'),
    source: gvisorSource.default({ type: 'build' }),
    /** io.containerd.runsc.v1 (the runsc shim), or the runc v2 shim with runsc as its binary where no runsc shim exists. */
    shim: z.enum(['runsc', 'runc-v2']).default('runsc'),
    configFlags: z.record(z.string(), z.string()).default({}),
  })
  .strict();

const containerdSchema = z
  .object({
    /** image-builder: containerd_image_pull_progress_timeout */
    imagePullProgressTimeout: z.string().regex(/^\d+(ns|us|ms|s|m|h)([\d]+(ns|us|ms|s|m|h))*$/, 'a Go duration like "5m0s"').optional(),
    /** image-builder: containerd_additional_settings (TOML appended at the end of config.toml) */
    additionalSettings: z.string().optional(),
    /** image-builder: containerd_enable_limit_no_file */
    enableLimitNoFile: z.boolean().default(false),
  })
  .strict();

const labelValue = z.string().regex(/^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/, 'a Kubernetes label value (at most 63 characters: alphanumerics, "-", "_", ".")');

/** kind v1alpha4 Mount (the fields kind accepts), for cluster.extraMounts. */
const kindMount = z
  .object({
    hostPath: z.string().min(1),
    containerPath: z.string().startsWith('/'),
    readOnly: z.boolean().optional(),
    propagation: z.enum(['None', 'HostToContainer', 'Bidirectional']).optional(),
  })
  .strict();

const kindCluster = z
  .object({
    /** "kind": a kind cluster (Kubernetes in Docker containers), made with the kind CLI; needs a running Docker engine. */
    provider: z.literal('kind'),
    /** kind cluster name; the node containers are <name>-control-plane, <name>-worker, <name>-worker2, … */
    name: z.string().regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'a DNS-1123 name (kind: lowercase alphanumerics, "-", ".")').default('gvisor-e2e'),
    stateDir: z.string().optional(),
    /** The kindest/node image every node boots (pinned in harness/versions.ts). */
    nodeImage: z.string().min(1).default(KIND_NODE_IMAGE),
    /** A kind binary to use; default: `kind` on PATH, else built from its Go module. */
    kindBinary: z.string().min(1).optional(),
    /** How long `kind create cluster --wait` waits for the control plane to be Ready. */
    wait: duration.default('5m'),
    pools: z
      .array(
        z
          .object({
            name: labelValue.pipe(z.string().min(1)),
            nodes: z.number().int().min(1).max(16).default(1),
            /** Extra node labels for this pool's nodes. */
            labels: z.record(z.string(), labelValue).default({}),
          })
          .strict(),
      )
      .min(1),
    /** Host directories mounted into every node container (kind extraMounts). */
    extraMounts: z.array(kindMount).default([]),
  })
  .strict();

export const SUITE_NAMES = ['runsc-installation', 'sandbox-dmesg', 'net-raw', 'limit-nofile', 'runtimeclass-scheduling'] as const;
export type SuiteName = (typeof SUITE_NAMES)[number];

export const configSchema = z
  .object({
    apiVersion: z.literal('gvisor-e2e.dev/v1alpha1'),
    kind: z.literal('Config'),
    cluster: z.discriminatedUnion('provider', [
      z
        .object({
          /** "nodes": hosts you already have, reached over SSH / locally / docker exec, without a Kubernetes API. */
          provider: z.literal('nodes'),
          name: z.string().min(1).default('gvisor-e2e'),
          nodes: z.array(nodeSchema).min(1),
        })
        .strict(),
      z
        .object({
          /** "vm": hosts (VMs) reached over SSH that the harness provisions: containerd 2.x, CNI, then the normal install. */
          provider: z.literal('vm'),
          name: z.string().min(1).default('gvisor-e2e'),
          hosts: z.array(vmHostSchema).min(1),
          /** The kubeconfig of an existing cluster these hosts are nodes of (RuntimeClass, labels, API pods). */
          kubeconfig: z.string().min(1).optional(),
        })
        .strict(),
      z
        .object({
          /** "local": the embedded default: throwaway nodes on this machine, made and removed by the harness. */
          provider: z.literal('local'),
          name: z.string().regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'a DNS-1123 label').default('gvisor-e2e'),
          /** Where node state lives (must not be on a tmpfs that hides it from `down` in another shell). */
          stateDir: z.string().optional(),
          /** Make the nodes a real Kubernetes cluster: control plane processes plus a kubelet on every host node. */
          kubernetes: z.boolean().default(false),
          /** Official release binaries to use instead of building them (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl, etcd). */
          kubernetesBinDir: z.string().optional(),
          pools: z
            .array(
              z
                .object({
                  name: z.string().min(1),
                  nodes: z.number().int().min(1).max(64).default(1),
                  /** host: a user+mount+network namespace node on this machine; systemd: a Debian booted with systemd-nspawn. */
                  kind: z.enum(['host', 'systemd']).default('host'),
                  osFamily: z.enum(OS_FAMILIES).default('auto'),
                })
                .strict(),
            )
            .min(1),
        })
        .strict(),
      kindCluster,
      z
        .object({
          /** "existing": a Kubernetes cluster the harness did not create (a Gardener shoot); down removes only what the harness made. */
          provider: z.literal('existing'),
          name: z.string().regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'a DNS-1123 label').default('existing'),
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
        .strict(),
    ]),
    gvisor: gvisorSchema,
    containerd: containerdSchema.default({ enableLimitNoFile: false }),
    suites: z
      .object({
        include: z.array(z.enum(SUITE_NAMES)).optional(),
        skip: z.array(z.enum(SUITE_NAMES)).default([]),
      })
      .strict()
      .default({ skip: [] }),
    timeouts: z
      .object({ command: duration.default('60s'), container: duration.default('60s'), containerdRestart: duration.default('60s') })
      .strict()
      .default({ command: '60s', container: '60s', containerdRestart: '60s' }),
    reportsDir: z.string().default('reports'),
    /** Bounded parallelism: suite files run in `suites` workers at once; within a suite, `nodes` nodes are checked at once. */
    concurrency: z
      .object({ suites: z.number().int().min(1).max(16).default(2), nodes: z.number().int().min(1).max(64).default(8) })
      .strict()
      .default({ suites: 2, nodes: 8 }),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.cluster.provider === 'kind') {
      checkPoolList(c.cluster.pools, c.gvisor.pools, ctx);
      return;
    }
    if (c.cluster.provider === 'existing') {
      refineExisting(c.cluster, c.gvisor.pools, ctx);
      return;
    }
    if (c.cluster.provider === 'local') {
      // Node names derive from pool names (<pool>-<n>): a repeated pool would make two nodes one.
      checkPoolList(c.cluster.pools, c.gvisor.pools, ctx);
      c.cluster.pools.forEach((p, i) => {
        if (c.gvisor.pools.includes(p.name) && p.kind === 'systemd') {
          ctx.addIssue({
            code: 'custom',
            path: ['cluster', 'pools', i, 'kind'],
            message: 'a gVisor pool of the local provider must be kind "host": the systemd node runs Debian\'s containerd 1.6, which cannot drive the current runsc shim',
          });
        }
      });
      return;
    }
    if (c.cluster.provider === 'nodes') {
      c.cluster.nodes.forEach((n, i) => {
        if (n.access.type === 'api') ctx.addIssue({ code: 'custom', path: ['cluster', 'nodes', i, 'access', 'type'], message: 'access "api" is only for nodes of an existing cluster' });
      });
    }
    const members = c.cluster.provider === 'vm' ? c.cluster.hosts : c.cluster.nodes;
    const key = c.cluster.provider === 'vm' ? 'hosts' : 'nodes';
    const names = new Set<string>();
    members.forEach((n, i) => {
      if (names.has(n.name)) ctx.addIssue({ code: 'custom', path: ['cluster', key, i, 'name'], message: `duplicate ${key === 'hosts' ? 'host' : 'node'} name "${n.name}"` });
      names.add(n.name);
    });
    if (c.cluster.provider === 'vm') {
      const seen = new Map<string, number>();
      c.cluster.hosts.forEach((h, i) => {
        const at = `${h.address}:${h.port}`;
        if (seen.has(at)) ctx.addIssue({ code: 'custom', path: ['cluster', 'hosts', i, 'address'], message: `${at} is already host [${seen.get(at)}]` });
        seen.set(at, i);
      });
    }
    const pools = new Set(members.map((n) => n.pool));
    c.gvisor.pools.forEach((p, i) => {
      if (!pools.has(p)) ctx.addIssue({ code: 'custom', path: ['gvisor', 'pools', i], message: `no ${key === 'hosts' ? 'host' : 'node'} is in pool "${p}" (pools: ${[...pools].join(', ')})` });
    });
  });

/** cluster.pools as kind and local clusters declare them: names unique, and every gVisor pool among them. */
function checkPoolList(pools: { name: string }[], gvisorPools: string[], ctx: z.RefinementCtx): void {
  const names = pools.map((p) => p.name);
  names.forEach((n, i) => {
    if (names.indexOf(n) < i) ctx.addIssue({ code: 'custom', path: ['cluster', 'pools', i, 'name'], message: `duplicate pool name "${n}"` });
  });
  gvisorPoolsAmong([...new Set(names)], gvisorPools, ctx);
}

function gvisorPoolsAmong(names: string[], gvisorPools: string[], ctx: z.RefinementCtx): void {
  gvisorPools.forEach((p, i) => {
    if (!names.includes(p)) ctx.addIssue({ code: 'custom', path: ['gvisor', 'pools', i], message: `no pool "${p}" in cluster.pools (pools: ${names.join(', ')})` });
  });
}

function refineExisting(c: ExistingCluster, gvisorPools: string[], ctx: z.RefinementCtx): void {
  const pools = c.pools?.map((p) => p.name) ?? gvisorPools;
  if (c.pools) {
    gvisorPoolsAmong(pools, gvisorPools, ctx);
    c.pools.forEach((p, i) => {
      if (pools.indexOf(p.name) !== i) ctx.addIssue({ code: 'custom', path: ['cluster', 'pools', i, 'name'], message: `duplicate pool "${p.name}"` });
      if (p.selector !== undefined && !LABEL_SELECTOR.test(p.selector)) {
        ctx.addIssue({ code: 'custom', path: ['cluster', 'pools', i, 'selector'], message: `"${p.selector}" is not a label selector like "worker.gardener.cloud/pool=gvisor"` });
      }
    });
  }
  const names = new Set<string>();
  c.nodes.forEach((n, i) => {
    if (n.access.type !== 'ssh') ctx.addIssue({ code: 'custom', path: ['cluster', 'nodes', i, 'access', 'type'], message: `expected "ssh": an existing cluster's nodes are reached over SSH (or through the API when not listed)` });
    if (names.has(n.name)) ctx.addIssue({ code: 'custom', path: ['cluster', 'nodes', i, 'name'], message: `duplicate node name "${n.name}"` });
    names.add(n.name);
    if (n.pool !== undefined && !pools.includes(n.pool)) ctx.addIssue({ code: 'custom', path: ['cluster', 'nodes', i, 'pool'], message: `no pool "${n.pool}" (pools: ${pools.join(', ')})` });
  });
}

/** key=value / key==value / key!=value / key / !key terms, comma-separated (kubectl's -l syntax without set-based terms). */
const LABEL_SELECTOR = /^\s*!?[A-Za-z0-9./_-]+(\s*(==?|!=)\s*[A-Za-z0-9._-]*)?(\s*,\s*!?[A-Za-z0-9./_-]+(\s*(==?|!=)\s*[A-Za-z0-9._-]*)?)*\s*$/;

export type Config = z.infer<typeof configSchema>;
export type NodeConfig = z.infer<typeof nodeSchema>;
export type NodesCluster = Extract<Config['cluster'], { provider: 'nodes' }>;
export type LocalCluster = Extract<Config['cluster'], { provider: 'local' }>;
export type KindCluster = Extract<Config['cluster'], { provider: 'kind' }>;
export type ExistingCluster = Extract<Config['cluster'], { provider: 'existing' }>;
export type VmCluster = Extract<Config['cluster'], { provider: 'vm' }>;
export type VmHost = VmCluster['hosts'][number];

/** Parses one node entry (the local provider builds them programmatically). */
export function nodeConfig(input: z.input<typeof nodeSchema>): NodeConfig {
  return nodeSchema.parse(input);
}
export type GVisorConfig = Config['gvisor'];
export type ContainerdConfig = Config['containerd'];

/** The flags gardener-extension-runtime-gvisor honours; everything else is ignored with a warning. */
export interface RunscFlags {
  'net-raw': 'true' | 'false';
}

export function effectiveRunscFlags(configFlags: Record<string, string>, warn: (m: string) => void = (m) => log('warn', m)): RunscFlags {
  const flags: RunscFlags = { 'net-raw': 'false' };
  for (const [k, v] of Object.entries(configFlags)) {
    if (k !== 'net-raw') {
      warn(`gvisor.configFlags.${k} is ignored: only "net-raw" is honoured (as gardener-extension-runtime-gvisor does)`);
    } else if (v !== 'true' && v !== 'false') {
      warn(`gvisor.configFlags.net-raw="${v}" is ignored: expected "true" or "false"`);
    } else {
      flags['net-raw'] = v;
    }
  }
  return flags;
}

export function durationMs(d: string): number {
  const m = /^(\d+)(ms|s|m|h)$/.exec(d);
  if (!m) throw new Error(`bad duration ${d}`);
  const n = Number(m[1]);
  return n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
}

function formatPath(path: PropertyKey[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join('');
}

/** Parses and validates a config text; `source` names it in errors (usually the file path). */
export function parseConfig(text: string, source: string): Config {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      source,
      // The path already names the line; drop the parser's own " at line N, column M:" suffix.
      doc.errors.map((e) => ({ path: e.linePos ? `line ${e.linePos[0].line}, column ${e.linePos[0].col}` : '', message: (e.message.split('\n')[0] ?? e.message).replace(/ at line \d+, column \d+:?$/, '') })),
    );
  }
  const result = configSchema.safeParse(doc.toJS());
  if (!result.success) {
    throw new ConfigError(
      source,
      result.error.issues.map((i) => ({ path: formatPath(i.path), message: describeIssue(i) })),
    );
  }
  return result.data;
}

function describeIssue(i: z.core.$ZodIssue): string {
  if (i.code === 'unrecognized_keys') return `unknown key(s) ${i.keys.map((k) => `"${k}"`).join(', ')}`;
  return i.message;
}

/** Loads a config file; relative paths inside it (keys, known_hosts, dirs) are resolved against the file's directory. */
export function loadConfig(file: string): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, [{ path: '', message: `cannot read the file: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` }]);
  }
  const cfg = parseConfig(text, file);
  const base = dirname(resolve(file));
  if (cfg.cluster.provider === 'local' && cfg.cluster.stateDir) cfg.cluster.stateDir = resolve(base, cfg.cluster.stateDir);
  if (cfg.cluster.provider === 'local' && cfg.cluster.kubernetesBinDir) cfg.cluster.kubernetesBinDir = resolve(base, cfg.cluster.kubernetesBinDir);
  if (cfg.cluster.provider === 'kind') {
    if (cfg.cluster.stateDir) cfg.cluster.stateDir = resolve(base, cfg.cluster.stateDir);
    if (cfg.cluster.kindBinary?.includes('/')) cfg.cluster.kindBinary = resolve(base, cfg.cluster.kindBinary);
    for (const m of cfg.cluster.extraMounts) m.hostPath = resolve(base, m.hostPath);
  }
  if (cfg.cluster.provider === 'existing') {
    cfg.cluster.kubeconfig = resolve(base, cfg.cluster.kubeconfig);
    if (cfg.cluster.stateDir) cfg.cluster.stateDir = resolve(base, cfg.cluster.stateDir);
  }
  const unreadable: { path: string; message: string }[] = [];
  // Resolves an SSH key and known_hosts against the config's dir; one that cannot be read is a
  // mistake in the config (exit 64), not a broken node.
  const keyFiles = (k: { privateKeyPath: string; knownHostsPath?: string }, at: string) => {
    k.privateKeyPath = resolve(base, k.privateKeyPath);
    if (k.knownHostsPath) k.knownHostsPath = resolve(base, k.knownHostsPath);
    for (const field of ['privateKeyPath', 'knownHostsPath'] as const) {
      const p = k[field];
      if (!p) continue;
      try {
        accessSync(p, constants.R_OK);
      } catch (e) {
        unreadable.push({ path: `${at}.${field}`, message: `cannot read ${p}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` });
      }
    }
  };
  (cfg.cluster.provider === 'nodes' || cfg.cluster.provider === 'existing' ? cfg.cluster.nodes : []).forEach((n, i) => {
    if (n.access.type === 'ssh') keyFiles(n.access, `cluster.nodes[${i}].access`);
  });
  if (cfg.cluster.provider === 'vm') {
    cfg.cluster.hosts.forEach((h, i) => keyFiles(h, `cluster.hosts[${i}]`));
    if (cfg.cluster.kubeconfig) cfg.cluster.kubeconfig = resolve(base, cfg.cluster.kubeconfig);
  }
  if (unreadable.length) throw new ConfigError(file, unreadable);
  if (cfg.gvisor.source.type === 'dir') cfg.gvisor.source.path = resolve(base, cfg.gvisor.source.path);
  return cfg;
}

/** Suites selected by the config and the CLI (--suite / --skip), in canonical order. */
export function selectSuites(cfg: Config, only?: string[], skip: string[] = []): SuiteName[] {
  for (const s of [...(only ?? []), ...skip]) {
    if (!(SUITE_NAMES as readonly string[]).includes(s)) {
      throw new ConfigError('command line', [{ path: '--suite/--skip', message: `unknown suite "${s}"; expected one of ${SUITE_NAMES.join(', ')}` }]);
    }
  }
  // The scheduling suite needs a Kubernetes API; by default it runs where the cluster has one.
  const kube =
    (cfg.cluster.provider === 'local' && cfg.cluster.kubernetes) ||
    cfg.cluster.provider === 'kind' ||
    cfg.cluster.provider === 'existing' ||
    (cfg.cluster.provider === 'vm' && Boolean(cfg.cluster.kubeconfig));
  const base = only?.length ? (only as SuiteName[]) : (cfg.suites.include ?? SUITE_NAMES.filter((s) => kube || s !== 'runtimeclass-scheduling'));
  const skipped = new Set([...cfg.suites.skip, ...skip]);
  const selected = SUITE_NAMES.filter((s) => base.includes(s) && !skipped.has(s));
  // A run that checks nothing would "pass": contradictory selections are a usage error instead.
  if (selected.length === 0) {
    throw new ConfigError('command line', [{ path: '--suite/--skip', message: `no suite left to run: selected ${base.join(', ') || '(none)'}, skipped ${[...skipped].join(', ')}` }]);
  }
  return selected;
}
