import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { install, up, down } from '../../bin/app.ts';
import { parseConfig } from '../../clusters/index.ts';
import { downloadRelease, releaseCacheDir } from '../../harness/binaries.ts';
import type { Config, NodeConfig } from '../../harness/config.ts';
import { openNode, writeNodeFile, type NodeAccess } from '../../harness/node.ts';
import { GVISOR_MODULE_VERSION } from '../../harness/versions.ts';
import { cli, expectLocalClusterGone, failures, latestSummary, localCluster, runInstalled, scratch, stateRoot, suiteStates, writeConfig, ALL_SUITES_PASSED } from './helpers.ts';
import { ARCH, layOutRelease, releaseFiles, serveReleases, type ReleaseFiles } from './release-fixture.ts';

// gVisor releases as gVisor publishes them since ~20260831 (one tarball with runsc, the shim and
// gvisor-bin/) and before (loose files), served from a local HTTP server (release-fixture.ts says what
// in them is built from the module and what is a stand-in). `source: release` downloads each layout;
// a node's sidecars are installed, checked, and judged by their policy; nothing is left after down.

const dir = scratch('release');
const bucket = join(dir, 'bucket');
const reports = join(dir, 'reports');
const name = `rel${process.pid}`;
const LABEL = 'release-20260914.0';
// Digests, not buffers: a deep equality of two 60 MB buffers takes minutes.
const digest = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
let server: Awaited<ReturnType<typeof serveReleases>>;
let files: ReleaseFiles;

beforeAll(async () => {
  mkdirSync(bucket, { recursive: true });
  files = await releaseFiles(LABEL, dir);
  layOutRelease(bucket, '20260914', 'tarball', files);
  layOutRelease(bucket, '20260915', 'bz2', files);
  layOutRelease(bucket, '20260101', 'loose', files);
  layOutRelease(bucket, '20260916', 'tarball', files, { badSum: true });
  server = await serveReleases(bucket);
}, 1_800_000);

afterAll(() => {
  server?.close();
  // The cluster tests downloaded into the shared cache, under this server's URL: only this run uses it.
  if (server) rmSync(releaseCacheDir(server.url), { recursive: true, force: true });
});

describe('source: release downloads every layout gVisor has published', () => {
  // A cache of this test's own: the bucket's URL (a fresh port) keys the cache anyway.
  const cache = join(dir, 'cache');
  const inCache = <T>(fn: () => Promise<T>) => async () => {
    process.env.GVISOR_E2E_CACHE = cache;
    try {
      return await fn();
    } finally {
      delete process.env.GVISOR_E2E_CACHE;
    }
  };

  it(
    'a current release: gvisor.tar.zstd, checked against its .sha512, gives runsc, the shim and gvisor-bin/',
    inCache(async () => {
      const b = await downloadRelease('20260914', server.url);
      expect(b.layout).toBe('gvisor.tar.zstd');
      expect(Object.keys(b.sidecars).sort()).toEqual(['checkpointgofer', 'gvisor-sentry-prewarmer', 'gvisor_sentry', 'runsc-metric-server']);
      expect(digest(b.runsc)).toBe(digest(files.runsc));
      expect(digest(b.sidecars.gvisor_sentry!)).toBe(digest(files.sidecars.gvisor_sentry!));
      expect(b.expectedVersion).toBe('release-20260914');
      // Only the zstd tarball was fetched: no loose runsc was asked for.
      expect(server.requests().filter((u) => u.includes('/20260914/'))).toEqual([`/20260914/${ARCH}/gvisor.tar.zstd`, `/20260914/${ARCH}/gvisor.tar.zstd.sha512`]);
    }),
  );

  it(
    'a release with only the bz2 tarball, and an old release with loose files, are found too',
    inCache(async () => {
      const bz = await downloadRelease('20260915', server.url);
      expect(bz.layout).toBe('gvisor.tar.bz2');
      expect(Object.keys(bz.sidecars)).toHaveLength(4);
      const loose = await downloadRelease('20260101', server.url);
      expect(loose.layout).toBe('loose files');
      expect(loose.sidecars).toEqual({});
      expect(digest(loose.shim)).toBe(digest(files.shim));
    }),
  );

  it(
    'a wrong .sha512 names both digests; a missing release names its URL and every layout tried',
    inCache(async () => {
      await expect(downloadRelease('20260916', server.url)).rejects.toThrow(
        new RegExp(`${server.url}/20260916/${ARCH}/gvisor.tar.zstd: sha512 mismatch: .*\\.sha512 says f{128}, the download is [0-9a-f]{128}`),
      );
      const err = await downloadRelease('20260917', server.url).catch((e: Error) => e);
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toContain(`gVisor release 20260917 was not found at ${server.url}/20260917/${ARCH}: tried gvisor.tar.zstd (`);
      expect((err as Error).message).toContain('gvisor.tar.bz2 (');
      expect((err as Error).message).toContain(`loose files (${server.url}/20260917/${ARCH}/runsc: HTTP 404)`);
      expect(existsSync(join(cache, 'gvisor-release'))).toBe(true);
    }),
  );
});

describe('a cluster installed from a release tarball', () => {
  const raw = localCluster(
    name,
    reports,
    { pools: [{ name: 'gvisor', kind: 'host' }, { name: 'plain', kind: 'host' }] },
    { gvisor: { pools: ['gvisor'], version: '20260914', source: { type: 'release', url: 'http://placeholder' } } },
  );
  let cfgPath = '';
  let cfg: Config;
  let nodes: NodeConfig[] = [];
  let gv: NodeAccess;
  const BIN = '/var/bin/containerruntimes';
  const toml = '/etc/containerd/runsc.toml';

  beforeAll(async () => {
    raw.gvisor.source.url = server.url;
    cfgPath = writeConfig(dir, 'config.yaml', raw);
    cfg = parseConfig(JSON.stringify(raw), cfgPath);
    nodes = await up(cfg);
    await install(cfg, nodes);
    gv = openNode(nodes.find((n) => n.pool === 'gvisor')!);
  }, 900_000);

  afterAll(async () => {
    await gv?.close();
    await down(cfg);
    expectLocalClusterGone(name);
  });

  const exec = async (cmd: string) => {
    const r = await gv.exec(cmd);
    if (r.code !== 0) throw new Error(`${cmd}: ${r.stderr}`);
    return r.stdout;
  };
  const sidecarCheck = (s: ReturnType<typeof latestSummary>) => s.checks.find((c) => c.suite === 'runsc-installation' && c.name.startsWith("runsc's sidecar binaries"))!;

  it('puts gvisor-bin/ next to runsc and every suite passes, with no sidecar warning', () => {
    const r = runInstalled(cfgPath, reports, ['runsc-installation', 'sandbox-dmesg', 'net-raw', 'limit-nofile']);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(suiteStates(r.summary)).toEqual(ALL_SUITES_PASSED.filter(([s]) => s !== 'runtimeclass-scheduling' && s !== 'sandbox-basics'));
    const c = sidecarCheck(r.summary);
    expect([c.node, c.state, c.warnings]).toEqual(['gvisor-1', 'passed', []]);
  });

  it('STRICT in runsc.toml with every sidecar: runsc boots sandboxes from gvisor-bin/, and the suites pass', async () => {
    await exec(`printf '[runsc_config]\\n  net-raw = "false"\\n  sidecar-usage-policy = "STRICT"\\n' > ${toml}`);
    const r = runInstalled(cfgPath, reports, ['runsc-installation', 'sandbox-dmesg']);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(sidecarCheck(r.summary).state).toBe('passed');
  });

  it('STRICT without gvisor-bin/: runsc-installation names the directory, sandbox-dmesg fails with runsc own cause', async () => {
    await exec(`mv ${BIN}/gvisor-bin ${BIN}/gvisor-bin.test-away`);
    try {
      const r = runInstalled(cfgPath, reports, ['runsc-installation', 'sandbox-dmesg']);
      expect(r.code).toBe(1);
      const inst = failures(r.summary, 'runsc-installation');
      expect(inst).toHaveLength(1);
      expect(inst[0]!.state).toBe('failed');
      expect(inst[0]!.message).toContain(`runsc ${LABEL} on gvisor-1 (sidecar-usage-policy STRICT) has no sidecar binaries: ${BIN}/gvisor-bin holds none of runsc-metric-server, checkpointgofer, gvisor_sentry, gvisor-sentry-prewarmer`);
      const dm = failures(r.summary, 'sandbox-dmesg');
      expect(dm.map((f) => f.state)).toEqual(['failed']);
      expect(dm[0]!.message).toMatch(/sidecar "gvisor_sentry" not usable .*--sidecar-usage-policy is set to STRICT/);
    } finally {
      await exec(`mv ${BIN}/gvisor-bin.test-away ${BIN}/gvisor-bin`);
    }
  });

  it('a sidecar from another release fails a release-built runsc, naming both labels', async () => {
    // Upstream's own checkpointgofer, as the pinned module embeds it (another build than this release's runsc).
    const modCache = execFileSync('go', ['env', 'GOMODCACHE'], { encoding: 'utf8' }).trim();
    const upstream = join(modCache, 'gvisor.dev', `gvisor@${GVISOR_MODULE_VERSION}`, 'runsc/checkpointgofer/checkpointgofer.bin');
    expect(existsSync(upstream), `${upstream} (the pinned gVisor module, downloaded by the build)`).toBe(true);
    await exec(`cp ${BIN}/gvisor-bin/checkpointgofer ${BIN}/.cpg.test-keep`);
    await writeNodeFile(gv, `${BIN}/gvisor-bin/checkpointgofer`, readFileSync(upstream), '0755');
    try {
      const r = runInstalled(cfgPath, reports, ['runsc-installation']);
      expect(r.code).toBe(1);
      expect(failures(r.summary, 'runsc-installation').map((f) => f.message).join()).toMatch(
        new RegExp(`${BIN}/gvisor-bin/checkpointgofer on gvisor-1 is from release "release-20260831[^"]*", runsc is "${LABEL}": runsc refuses sidecars from another release`),
      );
    } finally {
      await exec(`cp ${BIN}/.cpg.test-keep ${BIN}/gvisor-bin/checkpointgofer && rm -f ${BIN}/.cpg.test-keep`);
    }
  });

  it('install left the files of the node outside the gVisor pools as they were: no config.toml rewrite, only the test image recorded', async () => {
    const plain = openNode(nodes.find((n) => n.pool === 'plain')!);
    try {
      // Nothing gVisor needs is on this node, and no image-builder customization is configured:
      // its record holds the test image the suites run (removed by down), and no file.
      const journal = JSON.parse((await plain.exec('cat /var/lib/gvisor-e2e/installed.json')).stdout) as { created: string[]; replaced: unknown[]; images: string[] };
      expect([journal.created, journal.replaced]).toEqual([[], []]);
      expect(journal.images).toHaveLength(3);
      expect((await plain.exec('head -n1 /etc/containerd/config.toml')).stdout).not.toContain('gvisor-e2e');
    } finally {
      await plain.close();
    }
  });

  it('down removes gvisor-bin/ with the rest (checked by the afterAll), after an install that put it there', async () => {
    expect((await exec(`ls ${BIN}/gvisor-bin`)).split('\n').filter(Boolean).sort()).toEqual(['checkpointgofer', 'gvisor-sentry-prewarmer', 'gvisor_sentry', 'runsc-metric-server']);
    expect(await exec(`cat /var/lib/gvisor-e2e/installed.json`)).toContain(`${BIN}/gvisor-bin/gvisor_sentry`);
  });
});

describe('a release that fails its check, through the CLI', () => {
  it('`run` with a wrong .sha512 is broken (exit 2), names both digests, and leaves no cluster', () => {
    const bname = `rb${process.pid}`;
    const breports = join(dir, 'bad-reports');
    const bad = writeConfig(dir, 'bad-sum.yaml', localCluster(bname, breports, { pools: [{ name: 'gvisor', kind: 'host' }] }, { gvisor: { pools: ['gvisor'], version: '20260916', source: { type: 'release', url: server.url } } }));
    const r = cli(['--config', bad, 'run']);
    expect(r.code, r.stderr.slice(-2000)).toBe(2);
    expect(r.stderr).toMatch(new RegExp(`${server.url}/20260916/${ARCH}/gvisor.tar.zstd: sha512 mismatch: .*\\.sha512 says f{128}, the download is [0-9a-f]{128}`));
    expect(existsSync(join(stateRoot(), bname))).toBe(false);
  });
});

describe('repro with image-builder variables naming a dated release', () => {
  it('downloads the tarball layout into image-builder /usr/local/bin, with gvisor-bin/, and every suite passes', () => {
    const rname = `rr${process.pid}`;
    const rreports = join(dir, 'repro-reports');
    const base = writeConfig(dir, 'repro-base.yaml', localCluster(rname, rreports, { pools: [{ name: 'placeholder', kind: 'host' }] }, { gvisor: { pools: ['placeholder'], source: { type: 'release', url: server.url } } }));
    const vars = join(dir, 'vars.yaml');
    writeFileSync(vars, 'containerd_gvisor_runtime: "true"\ncontainerd_gvisor_version: "20260914"\n');
    const shoot = join(import.meta.dirname, '../../fixtures/manifests/shoot.yaml');
    const r = cli(['--config', base, 'repro', shoot, '--image-builder', vars]);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    // Downloaded (or taken from this run's cache) from the mirror the base config names.
    expect(existsSync(join(releaseCacheDir(server.url), '20260914', 'gvisor-bin', 'gvisor_sentry'))).toBe(true);
    expect(r.stderr).toContain('/usr/local/bin/gvisor-bin/gvisor_sentry');
    const s = latestSummary(rreports);
    expect(suiteStates(s)).toEqual(ALL_SUITES_PASSED);
    const c = s.checks.find((x) => x.suite === 'runsc-installation' && x.name.startsWith("runsc's sidecar binaries"))!;
    expect([c.state, c.warnings]).toEqual(['passed', []]);
    expect(s.checks.map((x) => x.name)).toContain('runsc runs and reports version release-20260914');
    expect(existsSync(join(stateRoot(), rname))).toBe(false);
  });
});
