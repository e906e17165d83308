// The conformance profile of gVisor itself (gvisor.dev/gvisor, as of the module harness/versions.ts pins):
// where runsc looks for its sidecar binaries, and when it may do without them.

import { rule } from './rule.ts';

const REPO = 'gvisor';
const BINARIES = `${REPO} runsc/gvisorbinaries/gvisorbinaries.go`;
const FLAGS = `${REPO} runsc/config/flags.go`;
const CONFIG = `${REPO} runsc/config/config.go`;
const SANDBOX = `${REPO} runsc/sandbox/sandbox.go`;

export interface Sidecar {
  name: string;
  /** A Go binary on runsc's CLI (cli.Run), which answers `--version` with its build label; the prewarmer is C. */
  reportsVersion: boolean;
}

/** The sidecars of a standard installation (`All`), which runsc resolves in `gvisor-bin/` next to itself. */
export const sidecars = rule(`${BINARIES} (All; binDirName "gvisor-bin")`, (): Sidecar[] => [
  { name: 'runsc-metric-server', reportsVersion: true },
  { name: 'checkpointgofer', reportsVersion: true },
  { name: 'gvisor_sentry', reportsVersion: true },
  { name: 'gvisor-sentry-prewarmer', reportsVersion: false },
]);

/**
 * The directory runsc looks in: `gvisor-bin/` next to the path runsc was run by, if that is a
 * directory, else next to the binary that path resolves to through symlinks (resolveDir).
 */
export const sidecarDir = rule(`${BINARIES} (resolveDir)`, (f: { runsc: string; nextToPathIsDir: boolean; resolvedRunsc: string }): string => {
  const parent = (p: string) => p.slice(0, p.lastIndexOf('/')) || '/';
  return `${parent(f.nextToPathIsDir ? f.runsc : f.resolvedRunsc)}/gvisor-bin`.replace(/^\/\//, '/');
});

export type UsagePolicy = 'DEFAULT' | 'STRICT' | 'LEGACY_DEPRECATED_SLOW_EMBEDDED_FALLBACK';

/**
 * The sidecar usage policy runsc runs with: runsc.toml's `sidecar-usage-policy` (the shim passes
 * `[runsc_config]` as flags), else runsc's own default (its flag help says "(default …)"; "the
 * DEFAULT policy will change to STRICT after 2026-09"). Values are case-insensitive.
 */
export const usagePolicy = rule(`${FLAGS} (--sidecar-usage-policy); ${CONFIG} (SidecarUsagePolicy.Set)`, (configured: string | undefined, runscDefault: string | undefined): UsagePolicy | undefined => {
  const v = (configured ?? runscDefault ?? 'DEFAULT').toUpperCase();
  return v === 'DEFAULT' || v === 'STRICT' || v === 'LEGACY_DEPRECATED_SLOW_EMBEDDED_FALLBACK' ? v : undefined;
});

/**
 * Whether runsc may go on without an on-disk sidecar: STRICT refuses to start a sandbox without the
 * sentry or the prewarmer; the other policies boot with runsc itself, without the prewarmer, or run
 * an embedded copy (deprecated, slower, "will stop working after 2026-10").
 */
export const fallbackAllowed = rule(`${CONFIG} (AllowEmbeddedFallback); ${SANDBOX} (createSandboxProcess)`, (policy: UsagePolicy): boolean => policy !== 'STRICT');

/** runsc's version string is a tagged release: `release-` or `g<lowercase>-`, then the date. */
export const isReleaseVersion = rule(`${CONFIG} (IsReleaseVersion)`, (version: string): boolean => /^(?:release|g[a-z]*)-\d{8}(?:\.\d+)?$/.test(version));

/**
 * Whether a sidecar from another release than runsc is refused (it panics at start): policy
 * ALWAYS, or IF_RELEASE_BUILD (the default) when runsc is a release build; NEVER only warns.
 */
export const releaseEnforced = rule(`${FLAGS} (--sidecar-release-enforcement-policy); ${BINARIES} (VerifyMatchingRelease)`, (policy: string | undefined, runscVersion: string): boolean => {
  const p = (policy ?? 'IF_RELEASE_BUILD').toUpperCase();
  if (p === 'ALWAYS') return true;
  if (p === 'NEVER') return false;
  return isReleaseVersion(runscVersion);
});

const VERSION = `${REPO} runsc/version/version.go`;
const GOSS = 'image-builder images/capi/packer/goss/goss-command.yaml';
const HARNESS_BUILD = 'gvisor-e2e README.md ("Where gVisor comes from": a build is labelled with the pinned module version)';

export interface VersionInputs {
  /** gvisor.version: "latest", a release date yyyymmdd[.n], or an exact version string. */
  configured: string;
  source: 'build' | 'release' | 'dir';
  /** The label of the build the harness installed (source build: the pinned module version); '' when unknown. */
  pinned: string;
}

/**
 * Whether the version runsc reports (`runsc --version`: "runsc version <v>") is the configured one:
 * a release date must be that release (`release-<date>`, with its `.n` if the date gives none);
 * `latest` from the release bucket must be some release build; a build must carry the pinned
 * label; an exact string must be that string. image-builder's goss only asks that runsc answers.
 */
export const runscVersion = rule(`${VERSION}; ${CONFIG} (IsReleaseVersion); ${GOSS} ("runsc --version"); ${HARNESS_BUILD}`, (reported: string, i: VersionInputs): { ok: boolean; expected: string } => {
  const date = /^(\d{8})(\.\d+)?$/.exec(i.configured);
  if (date) {
    const want = `release-${i.configured}`;
    return { ok: reported === want || (!date[2] && reported.startsWith(`${want}.`)), expected: want };
  }
  if (i.source === 'build' && i.pinned) return { ok: reported === i.pinned, expected: i.pinned };
  if (i.configured === 'latest') {
    if (i.source === 'release') return { ok: isReleaseVersion(reported), expected: 'a release build (release-yyyymmdd)' };
    return { ok: reported !== '', expected: 'any version' };
  }
  return { ok: reported === i.configured, expected: i.configured };
});

/**
 * The shim really runs: started with no arguments, containerd-shim-runsc-v1 exits 1 with
 * "io.containerd.runsc.v1: shim namespace cannot be empty" on stderr, as image-builder's goss checks.
 */
export const shimAnswer = rule(`${GOSS} ("containerd-shim-runsc-v1": exit-status 1, "shim namespace cannot be empty")`, () => ({ exitCode: 1, stderr: 'shim namespace cannot be empty' }));
