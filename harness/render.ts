import { parse as parseToml, stringify as stringifyToml, TomlError } from 'smol-toml';
import { LIMIT_NOFILE } from './versions.ts';

// Pure rendering of every file the installer puts on a node. No I/O here, so each rule
// (config version, plugin names, drop-in placement) has a fast unit test.

export type TomlTable = Record<string, unknown>;

/** containerd config schema version: 1 when absent (the deprecated default), else the `version` key. */
export function containerdConfigVersion(cfg: TomlTable): 1 | 2 | 3 {
  const v = cfg.version;
  if (v === undefined) return 1;
  if (v === 2 || v === 3) return v;
  if (v === 1) return 1;
  throw new Error(`unsupported containerd config version ${String(v)} (expected 1, 2 or 3)`);
}

/** Where runtimes live per config version: 1.x `plugins.cri`, 1.6/1.7 `io.containerd.grpc.v1.cri`, 2.x `io.containerd.cri.v1.runtime`. */
export function runtimesPath(version: 1 | 2 | 3): string[] {
  switch (version) {
    case 1:
      return ['plugins', 'cri', 'containerd', 'runtimes'];
    case 2:
      return ['plugins', 'io.containerd.grpc.v1.cri', 'containerd', 'runtimes'];
    case 3:
      return ['plugins', 'io.containerd.cri.v1.runtime', 'containerd', 'runtimes'];
  }
}

/** Where image_pull_progress_timeout lives (containerd >= 1.7 for v2; `io.containerd.cri.v1.images` in 2.x). */
export function imagesPluginPath(version: 1 | 2 | 3): string[] {
  switch (version) {
    case 1:
      return ['plugins', 'cri'];
    case 2:
      return ['plugins', 'io.containerd.grpc.v1.cri'];
    case 3:
      return ['plugins', 'io.containerd.cri.v1.images'];
  }
}

export function getIn(obj: TomlTable, path: string[]): unknown {
  let cur: unknown = obj;
  for (const p of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as TomlTable)[p];
  }
  return cur;
}

function ensureTable(obj: TomlTable, path: string[]): TomlTable {
  let cur = obj;
  for (const p of path) {
    const next = cur[p];
    if (next === undefined) cur[p] = {};
    else if (typeof next !== 'object' || next === null || Array.isArray(next)) throw new Error(`config key ${path.join('.')} is not a table`);
    cur = cur[p] as TomlTable;
  }
  return cur;
}

export interface RuntimeEntryOptions {
  handler: string;
  binaryPath: string;
  shim: 'runsc' | 'runc-v2';
  runscConfigPath: string;
}

/**
 * The runtime entry for the handler. With the runsc shim it matches what
 * gardener-extension-runtime-gvisor's install script (charts/internal/gvisor-installation/
 * templates/configmap-containerd.yaml) appends: runtime_type io.containerd.runsc.v1 plus
 * options TypeUrl/ConfigPath pointing at runsc.toml. Without a runsc shim, runc's v2 shim
 * drives runsc as its BinaryName.
 */
export function runtimeEntry(o: RuntimeEntryOptions): TomlTable {
  if (o.shim === 'runsc') {
    return { runtime_type: 'io.containerd.runsc.v1', options: { TypeUrl: 'io.containerd.runsc.v1.options', ConfigPath: o.runscConfigPath } };
  }
  return { runtime_type: 'io.containerd.runc.v2', options: { BinaryName: `${o.binaryPath}/runsc` } };
}

export interface ContainerdRenderOptions extends RuntimeEntryOptions {
  /** Install the runtime entry (false on nodes outside the gVisor pools). */
  gvisor: boolean;
  imagePullProgressTimeout?: string;
  additionalSettings?: string;
  /** Top-level `imports` config.toml must include (image-builder's conf.d), added to any it has. */
  imports?: string[];
}

export const MANAGED_HEADER = '# Managed by gvisor-e2e: rendered from the original config.toml (kept beside it as config.toml.gvisor-e2e.orig).';

/**
 * Renders config.toml from the node's original one. Always starting from the original keeps
 * re-application idempotent, and `down` can restore it byte for byte. image-builder's
 * containerd_additional_settings is appended verbatim at the end, as its config.toml template
 * does (roles/containerd/templates/etc/containerd/config.toml), and the result must still parse.
 */
export function renderContainerdConfig(original: string, o: ContainerdRenderOptions): string {
  let cfg: TomlTable;
  try {
    cfg = parseToml(original) as TomlTable;
  } catch (e) {
    throw new Error(`the node's containerd config.toml does not parse: ${(e as Error).message.split('\n')[0]}`);
  }
  const version = containerdConfigVersion(cfg);
  if (o.gvisor) {
    const runtimes = ensureTable(cfg, runtimesPath(version));
    // containerd replaces (not merges) its default runtimes map when the file has one, so a
    // config that relied on the built-in runc entry would lose it and the CRI plugin would
    // refuse to load. Keep the default runtime explicitly.
    const cri = getIn(cfg, runtimesPath(version).slice(0, -1)) as TomlTable;
    const defaultName = typeof cri.default_runtime_name === 'string' ? cri.default_runtime_name : 'runc';
    if (defaultName !== o.handler && runtimes[defaultName] === undefined) runtimes[defaultName] = { runtime_type: 'io.containerd.runc.v2' };
    runtimes[o.handler] = runtimeEntry(o);
  }
  if (o.imports?.length) {
    const have = Array.isArray(cfg.imports) ? (cfg.imports as unknown[]).map(String) : [];
    cfg.imports = [...have, ...o.imports.filter((i) => !have.includes(i))];
  }
  if (o.imagePullProgressTimeout) {
    if (version === 1) throw new Error('image_pull_progress_timeout needs containerd config version 2 or 3; the node has version 1');
    ensureTable(cfg, imagesPluginPath(version)).image_pull_progress_timeout = o.imagePullProgressTimeout;
  }
  if (!o.additionalSettings?.trim()) return `${MANAGED_HEADER}\n${stringifyToml(cfg)}\n`;
  const clash = additionalSettingsClash(parseAdditionalSettings(o.additionalSettings), o.handler);
  if (clash) throw new Error(`containerd.additionalSettings ${clash}`);
  // Verbatim, as image-builder's template renders them at the end, except that keys before the
  // settings' first table header go to the top of the file: appended after the last table, a
  // headerless `SystemdCgroup = false` would land in that table (on containerd 2.x, runsc's options).
  const { head, tables } = splitSettings(o.additionalSettings);
  const text =
    `${MANAGED_HEADER}\n` +
    (head.trim() ? `# containerd_additional_settings (top-level keys)\n${head.trimEnd()}\n\n` : '') +
    `${stringifyToml(cfg)}\n` +
    (tables.trim() ? `\n# containerd_additional_settings\n${tables.trimEnd()}\n` : '');
  try {
    parseToml(text);
  } catch (e) {
    throw new Error(`containerd.additionalSettings makes config.toml invalid TOML: ${tomlError(e)}`);
  }
  return text;
}

/** The settings' lines before their first table header (top-level keys and comments), and the rest. */
function splitSettings(settings: string): { head: string; tables: string } {
  const lines = settings.split('\n');
  const first = lines.findIndex((l) => /^\s*\[/.test(l));
  if (first < 0) return { head: settings, tables: '' };
  return { head: lines.slice(0, first).join('\n'), tables: lines.slice(first).join('\n') };
}

/** containerd.additionalSettings read as the TOML document of its own it is: its headerless keys are top level. */
export function parseAdditionalSettings(settings: string): TomlTable {
  try {
    return parseToml(settings) as TomlTable;
  } catch (e) {
    throw new Error(`containerd.additionalSettings is not valid TOML: ${tomlError(e)}`);
  }
}

/** A TOML parse error's first line (smol-toml adds a code excerpt below it). */
function tomlError(e: unknown): string {
  return e instanceof TomlError ? (e.message.split('\n')[0] ?? e.message) : String(e);
}

/**
 * What in the settings would undo the gVisor install, or undefined: a runtime table for the gVisor
 * handler, or a `default_runtime_name` (which would send every pod to some runtime the harness did
 * not choose), at any depth.
 */
export function additionalSettingsClash(extra: TomlTable, handler: string): string | undefined {
  const walk = (t: TomlTable, path: string[]): string | undefined => {
    for (const [k, v] of Object.entries(t)) {
      const here = [...path, k];
      if (k === 'default_runtime_name') return `sets ${here.join('.')}: the default runtime is not the harness's to change`;
      if (path.at(-1) === 'runtimes' && k === handler) return `redefines runtime "${handler}" (${here.join('.')}), the gVisor handler the install writes`;
      if (v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Date)) {
        const found = walk(v as TomlTable, here);
        if (found) return found;
      }
    }
    return undefined;
  };
  return walk(extra, []);
}

/** runsc.toml as the extension writes it: `[runsc_config]` with the honoured flags; debug and nvproxy off. */
export function renderRunscToml(flags: { 'net-raw': 'true' | 'false' }): string {
  return `[runsc_config]\n  net-raw = "${flags['net-raw']}"\n  debug = "false"\n  nvproxy = "false"\n`;
}

/** image-builder's templates/etc/systemd/system/containerd.service.d/limit-nofile.conf. */
export function renderLimitNofileDropIn(): string {
  return (
    '[Service]\n' +
    '# LimitNOFILE=infinity on Mariner means 1073741816, which has caused issues\n' +
    '# running some software in containers such as mysql5 and sshd.\n' +
    `LimitNOFILE=${LIMIT_NOFILE}\n`
  );
}

export const LIMIT_NOFILE_DROPIN = 'containerd.service.d/limit-nofile.conf';

/** image-builder's conf.d import (roles/containerd/templates/etc/containerd/config.toml). */
export const CONFD_IMPORT = '/etc/containerd/conf.d/*.toml';

/**
 * The conf.d import image-builder's config.toml template writes, unless containerd_additional_settings
 * mention `imports` (the template's own test: `'imports' not in containerd_additional_settings`).
 */
export function imageBuilderImports(additionalSettings: string | undefined): string[] {
  return (additionalSettings ?? '').includes('imports') ? [] : [CONFD_IMPORT];
}

/**
 * The systemd drop-ins image-builder's containerd role creates on every node besides limit-nofile.conf
 * (roles/containerd/templates/etc/systemd/system/containerd.service.d/), path under the unit dir and text.
 */
export function imageBuilderUnitDropIns(): { path: string; text: string }[] {
  return [
    { path: 'containerd.service.d/max-tasks.conf', text: '[Service]\n# Do not limit the number of tasks that can be spawned by containerd\nTasksMax=infinity\n' },
    {
      path: 'containerd.service.d/memory-pressure.conf',
      text: '[Service]\n# Decreases the likelihood that containerd is killed due to memory\n# pressure.\nOOMScoreAdjust=-999\n',
    },
  ];
}

/** image-builder deploys the drop-in on Flatcar and Azure Linux / CBL-Mariner, elsewhere only on opt-in. */
export function limitNofileExpected(osFamily: string, enableLimitNoFile: boolean): boolean {
  return enableLimitNoFile || ['flatcar', 'azurelinux', 'mariner'].includes(osFamily);
}

/** Maps /etc/os-release to the families the drop-in rule knows. */
export function osFamilyFromOsRelease(text: string): string {
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^([A-Z_]+)=(["']?)(.*)\2\s*$/.exec(line.trim());
    if (m) fields.set(m[1]!, m[3]!);
  }
  const ids = [fields.get('ID') ?? '', ...(fields.get('ID_LIKE') ?? '').split(/\s+/)].map((s) => s.toLowerCase());
  const name = (fields.get('NAME') ?? '').toLowerCase();
  if (ids.includes('flatcar') || name.includes('flatcar')) return 'flatcar';
  if (ids.includes('azurelinux') || name.includes('azure linux')) return 'azurelinux';
  if (ids.includes('mariner') || name.includes('mariner')) return 'mariner';
  for (const f of ['debian', 'ubuntu', 'rhel', 'photon'] as const) if (ids[0] === f) return f;
  if (ids.includes('ubuntu')) return 'ubuntu';
  if (ids.includes('debian')) return 'debian';
  if (ids.includes('rhel') || ids.includes('fedora')) return 'rhel';
  return 'other';
}

/** The handler's entry in a parsed config.toml, or undefined. */
export function findRuntime(cfg: TomlTable, handler: string): TomlTable | undefined {
  const entry = getIn(cfg, [...runtimesPath(containerdConfigVersion(cfg)), handler]);
  return entry && typeof entry === 'object' ? (entry as TomlTable) : undefined;
}

/** Parses `[runsc_config]` flags from a runsc.toml. */
export function parseRunscToml(text: string): Record<string, string> {
  const t = parseToml(text) as TomlTable;
  const rc = (t.runsc_config ?? {}) as Record<string, unknown>;
  return Object.fromEntries(Object.entries(rc).map(([k, v]) => [k, String(v)]));
}
