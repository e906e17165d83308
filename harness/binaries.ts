import { runCommand, which } from './process.ts';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { GVisorConfig } from './config.ts';
import { InfrastructureError } from './errors.ts';
import { step } from './log.ts';
import { CONTAINERD_MODULE_VERSION, CRI_API_MODULE_VERSION, GVISOR_MODULE_VERSION, KIND_VERSION } from './versions.ts';

// Heavy upstream artefacts (runsc, its shim, the CRI proto) are fetched or built once and cached
// outside the clone, keyed by version, so CI on the same machine reuses them. Go is used only
// as a build tool for upstream Go modules, never for harness code.


export function cacheRoot(): string {
  return process.env.GVISOR_E2E_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'gvisor-e2e');
}

export interface GVisorBinaries {
  runsc: string;
  shim: string;
  /**
   * runsc's sidecar binaries (gVisor 2026+), by file name: they go into `gvisor-bin/` next to runsc
   * (runsc/gvisorbinaries/gvisorbinaries.go). Empty for a release or directory without them.
   */
  sidecars: Record<string, string>;
  /** What `runsc --version` must report on the nodes. */
  expectedVersion: string;
}

/** The sidecars' directory, next to runsc (gvisorbinaries.go: binDirName). */
export const SIDECAR_DIR = 'gvisor-bin';

/** The sidecar files in a local `gvisor-bin/` directory (regular files only), or none. */
export function sidecarsIn(dir: string): Record<string, string> {
  const bin = join(dir, SIDECAR_DIR);
  if (!existsSync(bin)) return {};
  return Object.fromEntries(
    readdirSync(bin, { withFileTypes: true })
      .filter((e) => e.isFile())
      .map((e) => [e.name, join(bin, e.name)]),
  );
}

/** The environment for building upstream Go modules: static binaries; go.sum lines recorded as needed. */
export function goEnv(): NodeJS.ProcessEnv {
  return { ...process.env, CGO_ENABLED: '0', GOFLAGS: '-mod=mod' };
}

/** Runs the go tool; a failure carries go's own words (stderr, and stdout where `-json` puts errors). */
export async function go(workDir: string | undefined, args: string[]): Promise<string> {
  const r = await runCommand(['go', ...args], { cwd: workDir, env: goEnv(), timeoutMs: 3_600_000 });
  if (r.code !== 0) {
    const detail = [r.stderr, r.stdout].filter((x) => x.trim()).join('\n') || `exit ${r.code}`;
    throw new InfrastructureError(`go ${args.join(' ')} failed: ${detail.slice(-2000)}`);
  }
  return r.stdout;
}

export interface GoBuild {
  /** Output file name in the cache entry (may be in a subdirectory). */
  name: string;
  /** The package to build; with `main`, a package of the wrapper module holding that source. */
  pkg: string;
  ldflags: string;
  tags?: string;
  /** A small wrapper main (Go source), for upstream binaries whose main is a Bazel target only. */
  main?: string;
}

/**
 * Puts a finished build `out` in place as the cache entry `dir` with one rename, so no process ever
 * sees half an entry. An incomplete entry there (an interrupted older build) is replaced; a complete
 * one that another process (a second test lane) finished meanwhile is kept, and `out` is left for
 * the caller to remove.
 */
export function renameIntoCache(out: string, dir: string, complete: () => boolean): void {
  if (complete()) return;
  rmSync(dir, { recursive: true, force: true });
  try {
    renameSync(out, dir);
  } catch (e) {
    if (!complete()) throw e;
  }
}

/**
 * Builds binaries from upstream Go modules into <cacheRoot>/<entry>, in a throwaway wrapper module,
 * and renames the result into place as a whole: an interrupted build never leaves half an entry.
 */
export async function buildIntoCache(title: string, entry: string, get: string[], builds: GoBuild[]): Promise<string> {
  const dir = join(cacheRoot(), entry);
  const complete = () => builds.every((b) => existsSync(join(dir, b.name)));
  if (complete()) return dir;
  await step(title, async () => {
    const work = mkdtempSync(join(tmpdir(), 'gvisor-e2e-gobuild-'));
    try {
      writeFileSync(join(work, 'go.mod'), 'module gvisor-e2e/buildtool\n\ngo 1.26\n');
      await go(work, ['get', ...get]);
      const out = join(work, 'out');
      for (const b of builds) {
        mkdirSync(dirname(join(out, b.name)), { recursive: true });
        if (b.main) {
          mkdirSync(join(work, b.pkg), { recursive: true });
          writeFileSync(join(work, b.pkg, 'main.go'), b.main);
        }
        await go(work, ['build', ...(b.tags ? ['-tags', b.tags] : []), '-trimpath', '-ldflags', b.ldflags, '-o', join(out, b.name), b.main ? `./${b.pkg}` : b.pkg]);
      }
      mkdirSync(dirname(dir), { recursive: true });
      renameIntoCache(out, dir, complete);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
  return dir;
}

/**
 * The sidecars the gvisor.dev/gvisor Go module can build. Upstream, each is a Bazel target whose main
 * is not in the module; the wrapper main calls the entry point upstream's does (cli.Run with the
 * sidecar's identity and its subcommands, as runsc/cli/maincli does for runsc). The others cannot
 * be built from the module: gvisor-sentry-prewarmer is C, and the commands of checkpointgofer and
 * runsc-metric-server are not in it. Without them runsc starts without the prewarmer and uses its
 * embedded checkpointgofer, and the runsc-installation suite says so in the report.
 */
const SIDECAR_MAINS: Record<string, string> = {
  gvisor_sentry: `package main

import (
	"gvisor.dev/gvisor/runsc/cli"
	"gvisor.dev/gvisor/runsc/cmd/sentry/sentrycmd"
	"gvisor.dev/gvisor/runsc/cmd/util"
	"gvisor.dev/gvisor/runsc/gvisorbinaries"
)

func main() {
	cli.Run(&gvisorbinaries.GvisorSentry, map[util.SubCommand]string{new(sentrycmd.Boot): "", new(sentrycmd.Umount): ""}, nil)
}
`,
};

/**
 * Builds runsc, containerd-shim-runsc-v1 and the sidecar it can (gvisor-bin/gvisor_sentry)
 * from the gvisor.dev/gvisor module (about 4 min on 2 cores). `label` is the version the binaries report
 * (default: the module version); all of them carry the same one, as one release's do.
 */
export async function buildGVisor(version = GVISOR_MODULE_VERSION, label = version): Promise<GVisorBinaries> {
  const ldflags = `-s -w -X gvisor.dev/gvisor/runsc/version.version=${label}`;
  const dir = await buildIntoCache(
    `build runsc + containerd-shim-runsc-v1 + sidecars ${version}${label === version ? '' : ` (labelled ${label})`} from the gvisor.dev/gvisor Go module`,
    join('gvisor', label === version ? version : `${version}+${label}`),
    [`gvisor.dev/gvisor/runsc@${version}`, `gvisor.dev/gvisor/shim@${version}`],
    [
      { name: 'runsc', pkg: 'gvisor.dev/gvisor/runsc', ldflags },
      { name: 'containerd-shim-runsc-v1', pkg: 'gvisor.dev/gvisor/shim', ldflags: '-s -w' },
      ...Object.entries(SIDECAR_MAINS).map(([name, main]) => ({ name: `${SIDECAR_DIR}/${name}`, pkg: `sidecar/${name.replace(/-/g, '_')}`, ldflags, main })),
    ],
  );
  return { runsc: join(dir, 'runsc'), shim: join(dir, 'containerd-shim-runsc-v1'), sidecars: sidecarsIn(dir), expectedVersion: label };
}

/** Builds containerd and ctr from the containerd/v2 Go module (pure Go: no btrfs/devmapper/zfs snapshotters). */
export async function buildContainerd(version = CONTAINERD_MODULE_VERSION): Promise<{ dir: string; containerd: string; ctr: string }> {
  const mod = 'github.com/containerd/containerd/v2';
  const ldflags = `-s -w -X ${mod}/version.Version=${version}`;
  const dir = await buildIntoCache(
    `build containerd + ctr ${version} from the ${mod} Go module`,
    join('containerd', version),
    [`${mod}/cmd/containerd@${version}`, `${mod}/cmd/ctr@${version}`],
    [
      { name: 'containerd', pkg: `${mod}/cmd/containerd`, ldflags, tags: 'no_btrfs no_devmapper no_zfs' },
      { name: 'ctr', pkg: `${mod}/cmd/ctr`, ldflags },
    ],
  );
  return { dir, containerd: join(dir, 'containerd'), ctr: join(dir, 'ctr') };
}

/** Builds the kind CLI from the sigs.k8s.io/kind module (pure Go, about 30 s on 2 cores). */
export async function buildKind(version = KIND_VERSION): Promise<string> {
  const dir = await buildIntoCache(`build kind ${version} from the sigs.k8s.io/kind Go module`, join('kind', version), [`sigs.k8s.io/kind@${version}`], [
    { name: 'kind', pkg: 'sigs.k8s.io/kind', ldflags: '-s -w' },
  ]);
  return join(dir, 'kind');
}

/** gVisor's release bucket (runsc/cmd/install_sidecars.go, releaseTarballURL). */
export const RELEASE_BASE = 'https://storage.googleapis.com/gvisor/releases/release';

/**
 * The layouts of a release directory, newest first. Since about 20260831 a release is one tarball
 * (zstd and bz2, each with a .sha512) holding runsc, the shim and gvisor-bin/; before, runsc and the
 * shim were loose files with a .sha512 each (what image-builder's role still fetches).
 */
export type ReleaseLayout = 'gvisor.tar.zstd' | 'gvisor.tar.bz2' | 'loose files';

/** A release that was not there: every URL tried, per layout. */
class NotFound extends Error {}

/**
 * Downloads a release (`latest` or a date yyyymmdd[.n]) from `base`, trying the tarball layout
 * (zstd where this host can unpack it, then bz2) before the loose-file one, each file checked
 * against its .sha512. Cached by version, except `latest`.
 */
export async function downloadRelease(version: string, base = RELEASE_BASE): Promise<GVisorBinaries & { layout: ReleaseLayout }> {
  if (version !== 'latest' && !/^\d{8}(\.\d+)?$/.test(version)) {
    throw new InfrastructureError(`gvisor.version "${version}" is not a release: expected "latest" or a date "yyyymmdd"`);
  }
  const arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';
  const url = `${base.replace(/\/+$/, '')}/${version}/${arch}`;
  const dir = join(releaseCacheDir(base), version);
  const expectedVersion = version === 'latest' ? '' : `release-${version}`;
  const cached = (): (GVisorBinaries & { layout: ReleaseLayout }) | undefined => {
    if (!existsSync(join(dir, 'runsc')) || !existsSync(join(dir, 'containerd-shim-runsc-v1')) || !existsSync(join(dir, 'layout'))) return undefined;
    const layout = readFileSync(join(dir, 'layout'), 'utf8').trim() as ReleaseLayout;
    return { runsc: join(dir, 'runsc'), shim: join(dir, 'containerd-shim-runsc-v1'), sidecars: sidecarsIn(dir), expectedVersion, layout };
  };
  if (version !== 'latest') {
    const hit = cached();
    if (hit) return hit;
  }
  const layouts: ReleaseLayout[] = [...(which('zstd') ? (['gvisor.tar.zstd'] as const) : []), 'gvisor.tar.bz2', 'loose files'];
  const tried: string[] = [];
  await step(`download gVisor release ${version} from ${url}`, async () => {
    mkdirSync(dirname(dir), { recursive: true });
    const work = mkdtempSync(join(dirname(dir), `.${version}.`));
    try {
      for (const layout of layouts) {
        try {
          if (layout === 'loose files') {
            for (const name of ['runsc', 'containerd-shim-runsc-v1']) {
              writeFileSync(join(work, name), await fetchVerified(`${url}/${name}`), { mode: 0o755 });
            }
          } else {
            const tarball = join(work, layout);
            writeFileSync(tarball, await fetchVerified(`${url}/${layout}`));
            await unpackRelease(tarball, work, `${url}/${layout}`);
            rmSync(tarball);
          }
          writeFileSync(join(work, 'layout'), `${layout}\n`);
          rmSync(dir, { recursive: true, force: true });
          renameSync(work, dir);
          return;
        } catch (e) {
          if (!(e instanceof NotFound)) throw e;
          tried.push(`${layout} (${e.message})`);
        }
      }
      throw new InfrastructureError(`gVisor release ${version} was not found at ${url}: tried ${tried.join('; ')}`);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
  return cached()!;
}

/** Where releases from `base` are cached: keyed by the bucket too, as a mirror's "20260914" is not necessarily the bucket's. */
export function releaseCacheDir(base = RELEASE_BASE): string {
  return join(cacheRoot(), 'gvisor-release', createHash('sha256').update(base).digest('hex').slice(0, 12));
}

/** Downloads url and its url.sha512 and checks one against the other. A 404 of either is NotFound. */
async function fetchVerified(url: string): Promise<Buffer> {
  const [bin, sum] = await Promise.all([fetchBytes(url), fetchBytes(`${url}.sha512`)]);
  const want = sum.toString('utf8').trim().split(/\s+/)[0]?.toLowerCase() ?? '';
  const got = createHash('sha512').update(bin).digest('hex');
  if (want !== got) throw new InfrastructureError(`${url}: sha512 mismatch: ${url}.sha512 says ${want || '(empty)'}, the download is ${got}`);
  return bin;
}

/**
 * Unpacks runsc, the shim and gvisor-bin/* from a release tarball into dir. GNU tar does the work
 * (Node 20 has neither zstd nor bzip2, and tar is on every host that has the decompressor); its
 * members are listed first, and anything but those regular files (paths with "..", links,
 * devices) is refused, so a hostile tarball cannot write outside dir.
 */
async function unpackRelease(tarball: string, dir: string, url: string): Promise<void> {
  const z = tarball.endsWith('.zstd') ? '--zstd' : '--bzip2';
  const list = await runCommand(['tar', z, '-tvf', tarball], { timeoutMs: 300_000 });
  if (list.code !== 0) throw new InfrastructureError(`${url}: not a readable tarball: ${list.stderr.trim().slice(-400)}`);
  const wanted: string[] = [];
  for (const line of list.stdout.split('\n').filter(Boolean)) {
    const name = line.split(/\s+/).slice(5).join(' ');
    const clean = name.replace(/^\.\//, '');
    if (line.startsWith('d') || clean === '') continue;
    const ok = clean === 'runsc' || clean === 'containerd-shim-runsc-v1' || new RegExp(`^${SIDECAR_DIR}/[A-Za-z0-9_.-]+$`).test(clean);
    if (!ok) continue;
    if (!line.startsWith('-')) throw new InfrastructureError(`${url}: member ${name} is not a regular file (${line.slice(0, 10)}); refusing the release`);
    wanted.push(name);
  }
  for (const need of ['runsc', 'containerd-shim-runsc-v1']) {
    if (!wanted.some((w) => w.replace(/^\.\//, '') === need)) throw new InfrastructureError(`${url}: the tarball has no ${need}`);
  }
  const r = await runCommand(['tar', z, '-xf', tarball, '-C', dir, '--no-same-owner', '--no-same-permissions', '--', ...wanted], { timeoutMs: 300_000 });
  if (r.code !== 0) throw new InfrastructureError(`${url}: unpacking failed: ${r.stderr.trim().slice(-400)}`);
  for (const w of wanted) chmodSync(join(dir, w), 0o755);
}

async function fetchBytes(url: string): Promise<Buffer> {
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(300_000) });
  } catch (e) {
    throw new InfrastructureError(`cannot download ${url}: ${(e as Error).message}`);
  }
  if (res.status === 404) throw new NotFound(`${url}: HTTP 404`);
  if (!res.ok) throw new InfrastructureError(`cannot download ${url}: HTTP ${res.status}`);
  return Buffer.from(await res.arrayBuffer());
}

/** Resolves the binaries the config asks for. */
export async function gvisorBinaries(g: GVisorConfig): Promise<GVisorBinaries> {
  switch (g.source.type) {
    case 'build':
      return buildGVisor(g.version === 'latest' ? GVISOR_MODULE_VERSION : g.version);
    case 'release':
      return downloadRelease(g.version, g.source.url);
    case 'dir': {
      const runsc = join(g.source.path, 'runsc');
      const shim = join(g.source.path, 'containerd-shim-runsc-v1');
      if (!existsSync(runsc)) throw new InfrastructureError(`gvisor.source.path: ${runsc} does not exist`);
      return { runsc, shim, sidecars: sidecarsIn(g.source.path), expectedVersion: g.version === 'latest' ? '' : g.version };
    }
  }
}

/** The CRI api.proto from the k8s.io/cri-api Go module, cached. */
export async function criProtoPath(version = CRI_API_MODULE_VERSION): Promise<string> {
  const dest = join(cacheRoot(), 'cri-api', version, 'api.proto');
  if (existsSync(dest)) return dest;
  await step(`fetch k8s.io/cri-api ${version} (CRI protocol definition)`, async () => {
    const out = await go(undefined, ['mod', 'download', '-json', `k8s.io/cri-api@${version}`]);
    const { Dir } = JSON.parse(out) as { Dir: string };
    mkdirSync(join(cacheRoot(), 'cri-api', version), { recursive: true });
    copyFileSync(join(Dir, 'pkg/apis/runtime/v1/api.proto'), `${dest}.tmp`);
    renameSync(`${dest}.tmp`, dest);
  });
  return dest;
}
