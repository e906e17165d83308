import { readFileSync } from 'node:fs';
import { parse as parseToml } from 'smol-toml';
import { parseDocument } from 'yaml';
import type { Config } from './config.ts';
import { ConfigError } from './errors.ts';
import { additionalSettingsClash, parseAdditionalSettings } from './render.ts';
import { log } from './log.ts';

// A customer's image-builder variables (the Ansible/Packer vars of kubernetes-sigs/image-builder's
// containerd role, as YAML or JSON) as input to a reproduction: they become the config's gvisor and
// containerd sections. Packer passes every variable as a string, so booleans may be "true"/"false".

/** image-builder's own gVisor layout: runsc in /usr/local/bin, runtime handler "gvisor". */
export const IMAGE_BUILDER_GVISOR = { handler: 'gvisor', binaryPath: '/usr/local/bin' } as const;

export interface ImageBuilderVars {
  source: string;
  gvisorRuntime?: boolean;
  /** "latest" or a release date yyyymmdd. */
  gvisorVersion?: string;
  imagePullProgressTimeout?: string;
  additionalSettings?: string;
  enableLimitNoFile?: boolean;
}

const KNOWN = [
  'containerd_gvisor_runtime',
  'containerd_gvisor_version',
  'containerd_image_pull_progress_timeout',
  'containerd_additional_settings',
  'containerd_enable_limit_no_file',
] as const;

// The config schema's Go-duration shape (whole numbers), so what passes here also passes there.
const GO_DURATION = /^(\d+(ns|us|ms|s|m|h))+$/;

function bool(v: unknown): boolean | undefined {
  if (v === true || v === 'true') return true;
  if (v === false || v === 'false') return false;
  return undefined;
}

/** Parses the variables; unknown ones are warned about (they may be image-builder's, but the harness does not reproduce them). */
export function parseImageBuilderVars(text: string, source: string, warn: (m: string) => void = (m) => log('warn', m)): ImageBuilderVars {
  const doc = parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length) {
    throw new ConfigError(source, doc.errors.map((e) => ({ path: e.linePos ? `line ${e.linePos[0].line}, column ${e.linePos[0].col}` : '', message: e.message.split('\n')[0] ?? e.message })));
  }
  const obj = doc.toJS() as unknown;
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new ConfigError(source, [{ path: '', message: 'expected a mapping of image-builder variables (YAML or JSON), like {"containerd_gvisor_runtime": "true"}' }]);
  }
  const vars = obj as Record<string, unknown>;
  const issues: { path: string; message: string }[] = [];
  const out: ImageBuilderVars = { source };
  for (const k of Object.keys(vars)) {
    if (!(KNOWN as readonly string[]).includes(k)) warn(`${source}: ${k} is not reproduced (the harness maps ${KNOWN.join(', ')}); ignored`);
  }
  const has = (k: (typeof KNOWN)[number]) => k in vars && vars[k] !== null && vars[k] !== undefined && vars[k] !== '';
  const boolVar = (k: (typeof KNOWN)[number]) => {
    if (!has(k)) return undefined;
    const b = bool(vars[k]);
    if (b === undefined) issues.push({ path: k, message: `expected true or false (or "true"/"false"), got ${JSON.stringify(vars[k])}` });
    return b;
  };
  out.gvisorRuntime = boolVar('containerd_gvisor_runtime');
  if (has('containerd_gvisor_version')) {
    const v = String(vars.containerd_gvisor_version);
    if (v === 'latest' || /^\d{8}$/.test(v)) out.gvisorVersion = v;
    else issues.push({ path: 'containerd_gvisor_version', message: `expected "latest" or a release date yyyymmdd, got ${JSON.stringify(vars.containerd_gvisor_version)}` });
  }
  if (has('containerd_image_pull_progress_timeout')) {
    const v = vars.containerd_image_pull_progress_timeout;
    if (typeof v === 'string' && GO_DURATION.test(v)) out.imagePullProgressTimeout = v;
    else issues.push({ path: 'containerd_image_pull_progress_timeout', message: `expected a Go duration like "5m0s", got ${JSON.stringify(v)}` });
  }
  if (has('containerd_additional_settings')) {
    const v = vars.containerd_additional_settings;
    if (typeof v !== 'string') {
      issues.push({ path: 'containerd_additional_settings', message: `expected TOML text (appended to config.toml), got ${JSON.stringify(v)}` });
    } else {
      try {
        parseToml(v);
        out.additionalSettings = v;
      } catch (e) {
        issues.push({ path: 'containerd_additional_settings', message: `is not valid TOML: ${(e as Error).message.split('\n')[0]}` });
      }
    }
  }
  out.enableLimitNoFile = boolVar('containerd_enable_limit_no_file');
  if (issues.length) throw new ConfigError(source, issues);
  return out;
}

export function loadImageBuilderVars(file: string): ImageBuilderVars {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, [{ path: '', message: `cannot read the file: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` }]);
  }
  return parseImageBuilderVars(text, file);
}

/**
 * Applies the variables to a config (after a manifest, so image-builder's node layout wins where
 * its gVisor runtime is on): handler "gvisor" and runsc in /usr/local/bin, the release version,
 * and the containerd customizations.
 */
export function applyImageBuilderVars(cfg: Config, v: ImageBuilderVars, warn: (m: string) => void = (m) => log('warn', m)): Config {
  const out = structuredClone(cfg);
  if (v.gvisorRuntime) {
    const was = `handler "${out.gvisor.handler}", ${out.gvisor.binaryPath}`;
    out.gvisor.handler = IMAGE_BUILDER_GVISOR.handler;
    out.gvisor.binaryPath = IMAGE_BUILDER_GVISOR.binaryPath;
    const now = `handler "${out.gvisor.handler}", ${out.gvisor.binaryPath}`;
    if (was !== now) warn(`${v.source}: containerd_gvisor_runtime: image-builder's gVisor layout (${now}) replaces ${was}`);
  }
  if (v.gvisorVersion) {
    out.gvisor.version = v.gvisorVersion;
    // image-builder downloads a dated release from gVisor's bucket; "latest" keeps the configured source.
    // A configured mirror of the bucket stays the place to download from.
    if (v.gvisorVersion !== 'latest') out.gvisor.source = { type: 'release', ...(out.gvisor.source.type === 'release' && out.gvisor.source.url ? { url: out.gvisor.source.url } : {}) };
  }
  if (v.imagePullProgressTimeout !== undefined) out.containerd.imagePullProgressTimeout = v.imagePullProgressTimeout;
  if (v.additionalSettings !== undefined) {
    const clash = additionalSettingsClash(parseAdditionalSettings(v.additionalSettings), out.gvisor.handler);
    if (clash) throw new ConfigError(v.source, [{ path: 'containerd_additional_settings', message: clash }]);
    out.containerd.additionalSettings = v.additionalSettings;
  }
  if (v.enableLimitNoFile !== undefined) out.containerd.enableLimitNoFile = v.enableLimitNoFile;
  return out;
}
