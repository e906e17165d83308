import { runCommand } from './process.ts';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
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
  /** What `runsc --version` must report on the nodes. */
  expectedVersion: string;
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

interface GoBuild {
  /** Output file name in the cache entry. */
  name: string;
  pkg: string;
  ldflags: string;
  tags?: string;
}

/**
 * Builds binaries from upstream Go modules into <cacheRoot>/<entry>, in a throwaway wrapper module,
 * and renames the result into place as a whole: an interrupted build never leaves half an entry.
 */
async function buildIntoCache(title: string, entry: string, get: string[], builds: GoBuild[]): Promise<string> {
  const dir = join(cacheRoot(), entry);
  if (builds.every((b) => existsSync(join(dir, b.name)))) return dir;
  await step(title, async () => {
    const work = mkdtempSync(join(tmpdir(), 'gvisor-e2e-gobuild-'));
    try {
      writeFileSync(join(work, 'go.mod'), 'module gvisor-e2e/buildtool\n\ngo 1.26\n');
      await go(work, ['get', ...get]);
      const out = join(work, 'out');
      for (const b of builds) {
        await go(work, ['build', ...(b.tags ? ['-tags', b.tags] : []), '-trimpath', '-ldflags', b.ldflags, '-o', join(out, b.name), b.pkg]);
      }
      mkdirSync(dirname(dir), { recursive: true });
      rmSync(dir, { recursive: true, force: true });
      renameSync(out, dir);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
  return dir;
}

/** Builds runsc and containerd-shim-runsc-v1 from the gvisor.dev/gvisor module (about 2 min on 2 cores). */
export async function buildGVisor(version = GVISOR_MODULE_VERSION): Promise<GVisorBinaries> {
  const dir = await buildIntoCache(
    `build runsc + containerd-shim-runsc-v1 ${version} from the gvisor.dev/gvisor Go module`,
    join('gvisor', version),
    [`gvisor.dev/gvisor/runsc@${version}`, `gvisor.dev/gvisor/shim@${version}`],
    [
      { name: 'runsc', pkg: 'gvisor.dev/gvisor/runsc', ldflags: `-s -w -X gvisor.dev/gvisor/runsc/version.version=${version}` },
      { name: 'containerd-shim-runsc-v1', pkg: 'gvisor.dev/gvisor/shim', ldflags: '-s -w' },
    ],
  );
  return { runsc: join(dir, 'runsc'), shim: join(dir, 'containerd-shim-runsc-v1'), expectedVersion: version };
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

const RELEASE_BASE = 'https://storage.googleapis.com/gvisor/releases/release';

/** Downloads a release like image-builder does (runsc + shim, each checked against its .sha512). */
export async function downloadRelease(version: string): Promise<GVisorBinaries> {
  if (version !== 'latest' && !/^\d{8}(\.\d+)?$/.test(version)) {
    throw new InfrastructureError(`gvisor.version "${version}" is not a release: expected "latest" or a date "yyyymmdd"`);
  }
  const arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';
  const dir = join(cacheRoot(), 'gvisor-release', version);
  const bins = { runsc: join(dir, 'runsc'), shim: join(dir, 'containerd-shim-runsc-v1'), expectedVersion: version === 'latest' ? '' : `release-${version}` };
  if (version !== 'latest' && existsSync(bins.runsc) && existsSync(bins.shim)) return bins;
  await step(`download gVisor release ${version}`, async () => {
    mkdirSync(dir, { recursive: true });
    for (const name of ['runsc', 'containerd-shim-runsc-v1']) {
      const url = `${RELEASE_BASE}/${version}/${arch}/${name}`;
      const [bin, sum] = await Promise.all([fetchBytes(url), fetchBytes(`${url}.sha512`)]);
      const want = sum.toString('utf8').split(/\s+/)[0];
      const got = createHash('sha512').update(bin).digest('hex');
      if (want !== got) throw new InfrastructureError(`${url}: sha512 mismatch (expected ${want}, got ${got})`);
      writeFileSync(join(dir, `${name}.tmp`), bin);
      chmodSync(join(dir, `${name}.tmp`), 0o755);
      renameSync(join(dir, `${name}.tmp`), join(dir, name));
    }
  });
  return bins;
}

async function fetchBytes(url: string): Promise<Buffer> {
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(120_000) });
  } catch (e) {
    throw new InfrastructureError(`cannot download ${url}: ${(e as Error).message}`);
  }
  if (!res.ok) throw new InfrastructureError(`cannot download ${url}: HTTP ${res.status}`);
  return Buffer.from(await res.arrayBuffer());
}

/** Resolves the binaries the config asks for. */
export async function gvisorBinaries(g: GVisorConfig): Promise<GVisorBinaries> {
  switch (g.source.type) {
    case 'build':
      return buildGVisor(g.version === 'latest' ? GVISOR_MODULE_VERSION : g.version);
    case 'release':
      return downloadRelease(g.version);
    case 'dir': {
      const runsc = join(g.source.path, 'runsc');
      const shim = join(g.source.path, 'containerd-shim-runsc-v1');
      if (!existsSync(runsc)) throw new InfrastructureError(`gvisor.source.path: ${runsc} does not exist`);
      return { runsc, shim, expectedVersion: g.version === 'latest' ? '' : g.version };
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
