import { accessSync, constants, readFileSync } from 'node:fs';
import { resolve, dirname } from 'node:path';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { ConfigError } from './errors.ts';
import { log } from './log.ts';
import { additionalSettingsClash, parseAdditionalSettings } from './render.ts';
import type { Capabilities, Capability } from './capabilities.ts';

// One YAML file describes the whole run. Unknown keys are errors (a typo must not silently
// change what is tested); the one deliberate exception is gVisor's configFlags, where we copy
// gardener-extension-runtime-gvisor: only `net-raw` ("true"/"false") is honoured, the rest is
// ignored — but we say so, where the extension stays silent.

// Names and paths end up in commands run as root on nodes and on this machine (quoted, but never
// trusted): they are checked here, at parse time, so hostile input stops with exit 64 before
// anything exists. Messages show the value found (JSON-escaped, so a newline is visible).

/** A value as an error message shows it: JSON-escaped and cut short. */
export function shown(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 76)}…" (${String(v).length} characters)` : s;
}

function checked(what: string, ok: (s: string) => boolean) {
  return z.string().refine(ok, { error: (iss) => `expected ${what}, got ${shown(iss.input)}` });
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/** A DNS-1123 label: pool names, handler, cluster names (at most 63 characters). */
export const dnsLabel = checked('a DNS-1123 label (at most 63 lowercase letters, digits and "-", starting and ending with a letter or digit)', (s) => DNS_LABEL.test(s));
/** A DNS-1123 subdomain: node names (dot-separated labels, at most 253 characters). */
export const dnsName = checked('a DNS-1123 name (lowercase letters, digits, "-" and ".", at most 253 characters)', (s) => s.length <= 253 && s.split('.').every((l) => DNS_LABEL.test(l)));
export const labelValue = checked('a Kubernetes label value (at most 63 characters: alphanumerics, "-", "_", ".")', (s) => /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/.test(s));

/** Why `p` is not a safe path for a command line, or undefined. `absolute`: it must start with "/" and have no "..". */
export function pathProblem(p: string, absolute = true): string | undefined {
  if (absolute && !p.startsWith('/')) return `must start with "/" (an absolute path), got ${shown(p)}`;
  if (p.length === 0 || p.length > 255) return `must be 1 to 255 characters long, got ${p.length}`;
  if (!/^[A-Za-z0-9._+@\/-]+$/.test(p)) return `may contain only letters, digits and . _ - + @ / (no spaces, quotes, newlines or shell characters), got ${shown(p)}`;
  // A relative path of the config is resolved against its file's directory (fixtures use "../reports");
  // a path used as it is on a node must say where it is.
  if (absolute && p.split('/').includes('..')) return `must not contain ".." segments, got ${shown(p)}`;
  return undefined;
}

/** A path that goes into commands and unit files: plain characters, no "..", at most 255 characters. */
export const safePath = (absolute = true) =>
  z.string().superRefine((p, ctx) => {
    const why = pathProblem(p, absolute);
    if (why) ctx.addIssue({ code: 'custom', message: why });
  });
export const absolutePath = safePath(true);
/** A path of this machine that may be relative to the config file (resolved later): same characters, ".." allowed. */
export const configPath = safePath(false);

export const duration = z.string().regex(/^\d+(ms|s|m|h)$/, 'a duration like "30s", "5m" or "500ms"');

export const sshAccess = z
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
    containerdConfig: absolutePath.default('/etc/containerd/config.toml'),
    containerdSocket: absolutePath.default('/run/containerd/containerd.sock'),
    runscConfig: absolutePath.default('/etc/containerd/runsc.toml'),
    systemdUnitDir: absolutePath.default('/etc/systemd/system'),
    /** Where CRI container logs are written for the pods the suites start. */
    podLogDir: absolutePath.default('/var/log/gvisor-e2e'),
    /** Scratch space on the node (image tarballs). */
    tmpDir: absolutePath.default('/tmp'),
  })
  .strict();

export const nodeSchema = z
  .object({
    name: dnsName,
    pool: dnsLabel,
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

const gvisorSource = z.discriminatedUnion('type', [
  /** Build runsc and its shim from the gvisor.dev/gvisor Go module (cached by version). */
  z.object({ type: z.literal('build') }).strict(),
  /** Use binaries from a directory on the harness host (runsc, containerd-shim-runsc-v1). */
  z.object({ type: z.literal('dir'), path: configPath }).strict(),
  /** Download a dated release (yyyymmdd) or "latest" from gVisor's release bucket, sha512-checked. */
  z
    .object({
      type: z.literal('release'),
      /** A mirror of the bucket (default https://storage.googleapis.com/gvisor/releases/release), laid out as the bucket is: <url>/<version>/<arch>/…. */
      url: z.string().regex(/^https?:\/\/[^\s]+$/, 'an http(s) URL').optional(),
    })
    .strict(),
]);

const gvisorSchema = z
  .object({
    /** Worker pools whose nodes get gVisor (Gardener: the ContainerRuntime's workerPool). */
    pools: z.array(dnsLabel).min(1),
    /** CRI runtime handler. Gardener: "runsc"; image-builder: "gvisor". */
    handler: dnsLabel.default('runsc'),
    runtimeClassName: dnsName.default('gvisor'),
    /** Gardener default /var/bin/containerruntimes; image-builder /usr/local/bin. */
    binaryPath: absolutePath.default('/var/bin/containerruntimes'),
    /** "latest", a dated release "yyyymmdd" (image-builder's containerd_gvisor_version), or an exact version string. */
    version: checked('"latest", a release date yyyymmdd or a version string (letters, digits, ".", "_", "-", "+"; at most 64 characters)', (s) => /^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/.test(s)).default('latest'),
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


/** What every provider's `cluster` section has; the rest belongs to the provider (clusters/<provider>/). */
export interface ClusterSpec {
  provider: string;
  name: string;
}

export const SUITE_NAMES = ['runsc-installation', 'sandbox-dmesg', 'sandbox-basics', 'net-raw', 'limit-nofile', 'runtimeclass-scheduling', 'lifecycle'] as const;
export type SuiteName = (typeof SUITE_NAMES)[number];

/** What each suite needs from the cluster (see capabilities.ts); a suite that lacks it skips itself, naming it. */
export const SUITE_NEEDS: Record<SuiteName, Capability[]> = {
  'runsc-installation': [],
  'sandbox-dmesg': [],
  'sandbox-basics': [],
  'net-raw': [],
  'limit-nofile': [],
  'runtimeclass-scheduling': ['kubernetesApi'],
  lifecycle: ['kubernetesApi', 'installsNodes', 'reshapesPools'],
};

/** Suites that change the cluster while they run: only run when named (--suite or suites.include), never by default. */
export const OPT_IN_SUITES: readonly SuiteName[] = ['lifecycle'];

/** A cross-field rule of a provider: reports an issue at a config path. */
export type AddIssue = (path: (string | number)[], message: string) => void;

/**
 * What the provider registry (clusters/index.ts) lends the config loader: the `cluster` schema of
 * every provider, their cross-field rules, and which of their fields are paths to resolve.
 */
export interface ClusterSchemas {
  schema: z.ZodType<ClusterSpec>;
  check(cfg: Config, issue: AddIssue): void;
  resolvePaths(cfg: Config, paths: PathResolver): void;
}

/** Resolves a config's relative paths against its file's directory; key files must also be readable. */
export interface PathResolver {
  path(p: string): string;
  keyFiles(k: { privateKeyPath: string; knownHostsPath?: string }, at: string): void;
}

function baseSchema(cluster: z.ZodType<ClusterSpec>) {
  return z
    .object({
      apiVersion: z.literal('gvisor-e2e.dev/v1alpha1'),
      kind: z.literal('Config'),
      cluster,
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
      /** Resolved against the config file's directory, like every other path in it. */
      reportsDir: configPath.default('reports'),
      /** Bounded parallelism: suite files run in `suites` workers at once; within a suite, `nodes` nodes are checked at once. */
      concurrency: z
        .object({ suites: z.number().int().min(1).max(16).default(2), nodes: z.number().int().min(1).max(64).default(8) })
        .strict()
        .default({ suites: 2, nodes: 8 }),
    })
    .strict();
}

export type Config = z.infer<ReturnType<typeof baseSchema>>;

function configSchemaWith(cluster: z.ZodType<ClusterSpec>, check: ClusterSchemas['check']) {
  return baseSchema(cluster).superRefine((c, ctx) => {
    check(c, (path, message) => ctx.addIssue({ code: 'custom', path, message }));
    // Settings that would undo the install are refused here, naming the field, not at install time.
    const extra = c.containerd.additionalSettings;
    if (extra?.trim()) {
      try {
        const clash = additionalSettingsClash(parseAdditionalSettings(extra), c.gvisor.handler);
        if (clash) ctx.addIssue({ code: 'custom', path: ['containerd', 'additionalSettings'], message: clash });
      } catch (e) {
        ctx.addIssue({ code: 'custom', path: ['containerd', 'additionalSettings'], message: (e as Error).message.replace(/^containerd\.additionalSettings /, '') });
      }
    }
  });
}
export type NodeConfig = z.infer<typeof nodeSchema>;

/** Parses one node entry (providers build them programmatically). */
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
export function parseConfigWith(text: string, source: string, clusters: ClusterSchemas): Config {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      source,
      // The path already names the line; drop the parser's own " at line N, column M:" suffix.
      doc.errors.map((e) => ({ path: e.linePos ? `line ${e.linePos[0].line}, column ${e.linePos[0].col}` : '', message: (e.message.split('\n')[0] ?? e.message).replace(/ at line \d+, column \d+:?$/, '') })),
    );
  }
  const result = configSchemaWith(clusters.schema, clusters.check).safeParse(doc.toJS());
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

/** Loads a config file; every relative path inside it (keys, known_hosts, dirs, reportsDir) is resolved against the file's directory. */
export function loadConfigWith(file: string, clusters: ClusterSchemas): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, [{ path: '', message: `cannot read the file: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` }]);
  }
  const cfg = parseConfigWith(text, file, clusters);
  const base = dirname(resolve(file));
  const unreadable: { path: string; message: string }[] = [];
  const paths: PathResolver = {
    path: (p) => resolve(base, p),
    // An SSH key or known_hosts that cannot be read is a mistake in the config (exit 64), not a broken node.
    keyFiles(k, at) {
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
    },
  };
  clusters.resolvePaths(cfg, paths);
  if (unreadable.length) throw new ConfigError(file, unreadable);
  if (cfg.gvisor.source.type === 'dir') cfg.gvisor.source.path = paths.path(cfg.gvisor.source.path);
  cfg.reportsDir = paths.path(cfg.reportsDir);
  return cfg;
}

/**
 * Suites selected by the config and the CLI (--suite / --skip), in canonical order. By default a
 * suite runs where the cluster has what it needs; named explicitly, it runs and skips itself,
 * naming the capability it lacks.
 */
export function chooseSuites(cfg: Config, caps: Capabilities, only?: string[], skip: string[] = []): SuiteName[] {
  for (const s of [...(only ?? []), ...skip]) {
    if (!(SUITE_NAMES as readonly string[]).includes(s)) {
      throw new ConfigError('command line', [{ path: '--suite/--skip', message: `unknown suite "${s}"; expected one of ${SUITE_NAMES.join(', ')}` }]);
    }
  }
  const runnable = SUITE_NAMES.filter((s) => !OPT_IN_SUITES.includes(s) && SUITE_NEEDS[s].every((c) => caps[c]));
  const base: SuiteName[] = only?.length ? (only as SuiteName[]) : (cfg.suites.include ?? runnable);
  const skipped = new Set<string>([...cfg.suites.skip, ...skip]);
  const selected = SUITE_NAMES.filter((s) => base.includes(s) && !skipped.has(s));
  // A suite that reshapes the cluster would pull it from under the others' checks (suite files run side by side).
  const changing = selected.filter((s) => OPT_IN_SUITES.includes(s));
  if (changing.length && selected.length > 1) {
    throw new ConfigError('command line', [{ path: '--suite', message: `${changing.join(', ')} changes the cluster while it runs: run it on its own (--suite ${changing.join(' ')}), not with ${selected.filter((s) => !changing.includes(s)).join(', ')}` }]);
  }
  // A run that checks nothing would "pass": contradictory selections are a usage error instead.
  if (selected.length === 0) {
    throw new ConfigError('command line', [{ path: '--suite/--skip', message: `no suite left to run: selected ${base.join(', ') || '(none)'}, skipped ${[...skipped].join(', ')}` }]);
  }
  return selected;
}
