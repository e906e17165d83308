// The conformance spec the suites judge nodes by: one profile per upstream, independent of the installer's own code.

import { parse as parseToml } from 'smol-toml';
import * as gardener from './gardener.ts';
import * as gvisor from './gvisor.ts';
import * as imageBuilder from './image-builder.ts';
import * as kubernetes from './kubernetes.ts';
import * as lifecycle from './lifecycle.ts';
import { at, type Toml } from './rule.ts';

// Nothing here imports harness/render.ts, harness/installer.ts or harness/config.ts: a wrong rule
// in the installer must not also be the suites' expectation. tests/unit/spec.test.ts cross-checks
// the two statements on the good cases.

export { gardener, gvisor, imageBuilder, kubernetes, lifecycle, at, type Toml };
export type { Rule } from './rule.ts';

/** The suffix a failure message gets: where upstream states the rule that failed. */
export function cite(r: { source: string }): string {
  return ` [rule: ${r.source}]`;
}

/** The user's inputs the spec is a function of (a subset of gvisor-e2e's config, by shape). */
export interface SpecInputs {
  gvisor: { pools: string[]; handler: string; runtimeClassName: string; binaryPath: string; shim: 'runsc' | 'runc-v2'; configFlags: Record<string, string> };
  containerd: { imagePullProgressTimeout?: string; additionalSettings?: string; enableLimitNoFile: boolean };
}

/** Parses a containerd config.toml or runsc.toml; the error names the file and the node. */
export function parseTomlFile(text: string, file: string, node: string): Toml {
  try {
    return parseToml(text) as Toml;
  } catch (e) {
    throw new Error(`${file} on ${node} is not valid TOML: ${(e as Error).message.split('\n')[0]}`);
  }
}

/** The handler's runtime table in a parsed config.toml, where the spec puts it for the file's version; with the path looked at. */
export function runtimeTable(doc: Toml, handler: string): { version: gardener.ConfigVersion | undefined; path: string; entry: Toml | undefined } {
  const version = gardener.configVersion(doc);
  if (!version) return { version, path: `(unsupported config version ${String(doc.version)})`, entry: undefined };
  const path = [...gardener.runtimeTablePath(version), handler];
  const entry = at(doc, path);
  return { version, path: tomlPath(path), entry: entry && typeof entry === 'object' && !Array.isArray(entry) ? (entry as Toml) : undefined };
}

/** A TOML key path as it is written in a table header: plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc. */
export function tomlPath(path: readonly string[]): string {
  return path.map((k) => (/^[A-Za-z0-9_-]+$/.test(k) ? k : JSON.stringify(k))).join('.');
}

/** `[runsc_config]` of a runsc.toml, as strings. */
export function runscConfigOf(doc: Toml): Record<string, string> {
  const t = at(doc, ['runsc_config']);
  if (!t || typeof t !== 'object') return {};
  return Object.fromEntries(Object.entries(t as Toml).map(([k, v]) => [k, String(v)]));
}

/** The node's family for the LimitNOFILE rule: the configured one, else what its os-release says. */
export function nodeOsFamily(configured: string, osRelease: string): imageBuilder.OsFamily {
  return configured && configured !== 'auto' ? configured : imageBuilder.osFamilyOf(osRelease);
}

/** net-raw as the spec expects it in runsc.toml and in the sandbox. */
export function expectedNetRaw(s: SpecInputs): 'true' | 'false' {
  return gardener.runscFlags(s.gvisor.configFlags)['net-raw'];
}
