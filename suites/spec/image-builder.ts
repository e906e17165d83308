// The conformance profile of kubernetes-sigs/image-builder's containerd role: gVisor and the containerd customizations of a node image.

import { at, rule, type Toml } from './rule.ts';
import type { ConfigVersion } from './gardener.ts';

// Paths below are in github.com/kubernetes-sigs/image-builder, checked with the code search.
const ROLE = 'image-builder images/capi/ansible/roles/containerd';
const TASKS = `${ROLE}/tasks/main.yml`;
const CONFIG_TEMPLATE = `${ROLE}/templates/etc/containerd/config.toml`;
const DOC = 'image-builder docs/book/src/capi/containerd/customizing-containerd.md';
const HARNESS_CHOICE_MERGE = 'gvisor-e2e README.md (headerless settings at the top of the file: its own choice)';

/** image-builder's layout with containerd_gvisor_runtime: handler (and RuntimeClass) `gvisor`, runsc in /usr/local/bin. */
export const layout = rule(`${DOC}; ${TASKS} ("Download runsc for gvisor" into {{ sysusr_prefix }}/bin)`, () => ({ handler: 'gvisor', runtimeClassName: 'gvisor', binaryPath: '/usr/local/bin' }));

export const LIMIT_NOFILE_DROPIN = 'containerd.service.d/limit-nofile.conf';
export const LIMIT_NOFILE = 1048576;

/** The OS families image-builder's rule names. */
export type OsFamily = 'flatcar' | 'azurelinux' | 'mariner' | (string & {});

/**
 * The OS family of a node, read from its os-release text (ID, then ID_LIKE, then NAME). Only the
 * families the drop-in rule distinguishes matter; anything else is its ID (or "other").
 */
export function osFamilyOf(osRelease: string): OsFamily {
  const field = (key: string): string => {
    const line = osRelease.split(/\r?\n/).find((l) => l.trimStart().startsWith(`${key}=`));
    if (!line) return '';
    return line.trim().slice(key.length + 1).replace(/^(["'])(.*)\1$/, '$2').toLowerCase();
  };
  const id = field('ID');
  const like = field('ID_LIKE').split(/\s+/).filter(Boolean);
  const name = field('NAME');
  const ids = [id, ...like];
  if (ids.includes('flatcar') || name.includes('flatcar')) return 'flatcar';
  if (ids.includes('azurelinux') || name.includes('azure linux')) return 'azurelinux';
  if (ids.includes('mariner') || name.includes('mariner')) return 'mariner';
  return id || 'other';
}

/**
 * Whether the LimitNOFILE drop-in belongs on the node: by default on Flatcar and Azure Linux /
 * CBL-Mariner, elsewhere only with containerd_enable_limit_no_file (default false). The docs state
 * all three families; the stored tasks/main.yml versions search found gate it on "Common Base Linux
 * Mariner" only (older) — the docs are the current statement.
 */
export const limitNofileDropIn = rule(`${DOC} ("Overriding LimitNOFILE"); ${TASKS} ("Create containerd LimitNOFILE drop in file")`, (osFamily: OsFamily, enableLimitNoFile: boolean): boolean =>
  enableLimitNoFile || osFamily === 'flatcar' || osFamily === 'azurelinux' || osFamily === 'mariner',
);

/** The drop-in's path under the node's systemd unit directory, and the value it sets. */
export const limitNofileFile = rule(`${ROLE}/templates/etc/systemd/system/containerd.service.d/limit-nofile.conf`, (systemdUnitDir: string) => ({
  path: `${systemdUnitDir}/${LIMIT_NOFILE_DROPIN}`,
  section: 'Service',
  limitNofile: LIMIT_NOFILE,
}));

/**
 * Where containerd_image_pull_progress_timeout goes: the CRI plugin's table (version 2,
 * image-builder's template writes `version = 2`); in containerd 2.x (version 3) the images plugin
 * `io.containerd.cri.v1.images` (containerd's config docs / issue #10074; not confirmed in an
 * image-builder template). Version 1 has no such key: undefined.
 */
export const imagePullProgressTimeoutPath = rule(`${DOC} ("directly inserted into the containerd config.toml"); ${CONFIG_TEMPLATE}`, (version: ConfigVersion): string[] | undefined =>
  version === 1 ? undefined : version === 2 ? ['plugins', 'io.containerd.grpc.v1.cri', 'image_pull_progress_timeout'] : ['plugins', 'io.containerd.cri.v1.images', 'image_pull_progress_timeout'],
);

/** The timeout found in a parsed config.toml of the given version. */
export function imagePullProgressTimeoutIn(doc: Toml, version: ConfigVersion): unknown {
  const path = imagePullProgressTimeoutPath(version);
  return path ? at(doc, path) : undefined;
}

/**
 * containerd_additional_settings hold in config.toml: every value they set, read as the TOML document
 * of their own they are (keys before any table header are top-level keys), is at the same key path
 * in config.toml. image-builder's template appends the text at the end of config.toml, where a
 * headerless key would silently join the last table; the harness puts such keys at the top (its own
 * choice), and this rule states what both mean to the user.
 */
export const additionalSettingsApplied = rule(`${DOC} ("rendered at the end of the config.toml"); ${CONFIG_TEMPLATE}; ${HARNESS_CHOICE_MERGE}`, (configToml: Toml, settings: Toml): string[] => {
  const missing: string[] = [];
  const walk = (t: Toml, path: string[]) => {
    for (const [k, v] of Object.entries(t)) {
      const here = [...path, k];
      if (v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Date)) walk(v as Toml, here);
      else if (JSON.stringify(at(configToml, here)) !== JSON.stringify(v)) missing.push(here.join('.'));
    }
  };
  walk(settings, []);
  return missing;
});

/** The boot log a gVisor sandbox prints to dmesg: it starts with "Starting gVisor..." and ends with "Ready!". */
export const sandboxBootLog = rule(`${DOC} ("Running sandboxed containers using gVisor": dmesg example)`, (dmesg: string) => {
  const lines = dmesg.split('\n').map((l) => l.trimEnd()).filter(Boolean);
  return { starts: lines.some((l) => l.includes('Starting gVisor...')), ready: (lines.at(-1) ?? '').endsWith('Ready!'), lines };
});

const MAX_TASKS = `${ROLE}/templates/etc/systemd/system/containerd.service.d/max-tasks.conf`;
const MEMORY_PRESSURE = `${ROLE}/templates/etc/systemd/system/containerd.service.d/memory-pressure.conf`;
const CONFIG_IMPORTS = `${CONFIG_TEMPLATE} ("{% if 'imports' not in containerd_additional_settings %} imports = [\\"/etc/containerd/conf.d/*.toml\\"]")`;
const CONTAINERD_RELEASES = 'containerd RELEASES.md / docs/cri/config.md (image_pull_progress_timeout: containerd 1.7 and later)';

/** Whether gvisor-e2e's config follows image-builder's layout (handler and binary path of `layout`): only then are its other files due. */
export const followsLayout = rule(`${DOC}; ${TASKS}`, (g: { handler: string; binaryPath: string }): boolean => {
  const l = layout();
  return g.handler === l.handler && g.binaryPath.replace(/\/+$/, '') === l.binaryPath;
});

/** A systemd drop-in image-builder puts on every node: where, and the one setting it makes. */
export interface DropIn {
  path: string;
  key: string;
  value: string;
  source: string;
}

/** The drop-ins tasks/main.yml creates unconditionally (limit-nofile.conf has its own rule above). */
export const unitDropIns = rule(`${TASKS} ("Create containerd memory pressure drop-in file", "Create containerd max tasks drop-in file")`, (systemdUnitDir: string): DropIn[] => [
  { path: `${systemdUnitDir}/containerd.service.d/max-tasks.conf`, key: 'TasksMax', value: 'infinity', source: MAX_TASKS },
  { path: `${systemdUnitDir}/containerd.service.d/memory-pressure.conf`, key: 'OOMScoreAdjust', value: '-999', source: MEMORY_PRESSURE },
]);

export const CONFD_IMPORT = '/etc/containerd/conf.d/*.toml';

/** The `imports` config.toml must hold: conf.d's files, unless the additional settings bring their own `imports`. */
export const configImports = rule(CONFIG_IMPORTS, (additionalSettings: string | undefined): string[] | undefined => ((additionalSettings ?? '').includes('imports') ? undefined : [CONFD_IMPORT]));

/** Whether a containerd of this version knows image_pull_progress_timeout (an older one ignores the key). */
export const knowsImagePullProgressTimeout = rule(CONTAINERD_RELEASES, (containerdVersion: string): boolean | undefined => {
  const m = /v?(\d+)\.(\d+)/.exec(containerdVersion);
  if (!m) return undefined;
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return major > 1 || (major === 1 && minor >= 7);
});

/**
 * image_pull_progress_timeout as containerd itself reads its configuration (`containerd config
 * dump`: config.toml with its imports merged, in the dump's own version), not as the file says.
 */
export function imagePullProgressTimeoutInEffect(dump: Toml): unknown {
  const v = dump.version;
  const version = v === 2 || v === 3 ? v : undefined;
  return version ? imagePullProgressTimeoutIn(dump, version) : undefined;
}
