// A gVisor release, assembled from the binaries built here, served by a local HTTP server as gVisor's
// bucket serves one (<base>/<version>/<arch>/…). What it holds, and what is a stand-in:
// - runsc, containerd-shim-runsc-v1 and gvisor-bin/gvisor_sentry: built from the pinned gvisor.dev/gvisor
//   module, labelled with the release's version (harness/binaries.ts buildGVisor).
// - gvisor-bin/checkpointgofer and gvisor-bin/runsc-metric-server: runsc's own CLI entry point with the
//   sidecar's identity and the release label, but without the sidecar's command (upstream's is not in
//   the module). They answer `--version` like upstream's; they cannot checkpoint or serve metrics.
// - gvisor-bin/gvisor-sentry-prewarmer: a shell script that execs the sentry as upstream's C prewarmer's
//   argv says (`<prewarmer> <binary> <argv0> <args…>`), without prewarming anything.
// So a suite passing on this release proves runsc boots sandboxes with the on-disk sentry through the
// prewarmer's calling convention under STRICT, not that upstream's prewarmer or gofer work.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildGVisor, buildIntoCache, SIDECAR_DIR } from '../../harness/binaries.ts';
import { GVISOR_MODULE_VERSION } from '../../harness/versions.ts';

export const ARCH = process.arch === 'arm64' ? 'aarch64' : 'x86_64';

const standIn = (binary: string) => `package main

import (
	"gvisor.dev/gvisor/runsc/cli"
	"gvisor.dev/gvisor/runsc/cmd/util"
	"gvisor.dev/gvisor/runsc/gvisorbinaries"
)

func main() {
	cli.Run(&gvisorbinaries.${binary}, map[util.SubCommand]string{}, nil)
}
`;

const PREWARMER = '#!/bin/bash\n# gvisor-e2e test stand-in for gVisor\'s C prewarmer: exec <binary> with argv[0] <argv0>.\nbin=$1; shift; exec -a "$1" "$bin" "${@:2}"\n';

export interface ReleaseFiles {
  label: string;
  runsc: string;
  shim: string;
  /** gvisor-bin/ file name → local path. */
  sidecars: Record<string, string>;
}

/** Builds (or takes from the cache) the binaries of a release labelled `label`, e.g. "release-20260914.0". */
export async function releaseFiles(label: string, scratchDir: string): Promise<ReleaseFiles> {
  const bins = await buildGVisor(GVISOR_MODULE_VERSION, label);
  const ldflags = `-s -w -X gvisor.dev/gvisor/runsc/version.version=${label}`;
  const stands = await buildIntoCache(
    `build test stand-ins for checkpointgofer and runsc-metric-server (${label})`,
    join('gvisor-test-standins', `${GVISOR_MODULE_VERSION}+${label}`),
    [`gvisor.dev/gvisor/runsc@${GVISOR_MODULE_VERSION}`],
    [
      { name: 'checkpointgofer', pkg: 'standin/checkpointgofer', ldflags, main: standIn('CheckpointGofer') },
      { name: 'runsc-metric-server', pkg: 'standin/metricserver', ldflags, main: standIn('MetricServer') },
    ],
  );
  const prewarmer = join(scratchDir, 'gvisor-sentry-prewarmer');
  writeFileSync(prewarmer, PREWARMER, { mode: 0o755 });
  return {
    label,
    runsc: bins.runsc,
    shim: bins.shim,
    sidecars: { ...bins.sidecars, checkpointgofer: join(stands, 'checkpointgofer'), 'runsc-metric-server': join(stands, 'runsc-metric-server'), 'gvisor-sentry-prewarmer': prewarmer },
  };
}

const sha512 = (file: string) => createHash('sha512').update(readFileSync(file)).digest('hex');

/**
 * Lays out release `version` under root/<version>/<arch>/: 'tarball' (gvisor.tar.zstd and .bz2, each
 * with .sha512, as since ~20260831), 'bz2' (the bz2 tarball only) or 'loose' (runsc and the shim with a
 * .sha512 each, as before). `badSum` writes a wrong digest for every file.
 */
export function layOutRelease(root: string, version: string, layout: 'tarball' | 'bz2' | 'loose', f: ReleaseFiles, opts: { badSum?: boolean } = {}): string {
  const dir = join(root, version, ARCH);
  mkdirSync(dir, { recursive: true });
  const sum = (file: string, name: string) => writeFileSync(`${file}.sha512`, `${opts.badSum ? 'f'.repeat(128) : sha512(file)}  ${name}\n`);
  if (layout === 'loose') {
    for (const [name, src] of [['runsc', f.runsc], ['containerd-shim-runsc-v1', f.shim]] as const) {
      copyFileSync(src, join(dir, name));
      sum(join(dir, name), name);
    }
    return dir;
  }
  for (const [name, flag] of [['gvisor.tar.bz2', '--bzip2'], ...(layout === 'tarball' ? [['gvisor.tar.zstd', '--zstd']] : [])] as const) {
    copyFileSync(tarball(root, f, name, flag), join(dir, name));
    sum(join(dir, name), name);
  }
  return dir;
}

const tarballs = new Map<string, string>();
/** Packs the release's files once per compression (bzip2 of ~150 MB takes half a minute here). */
function tarball(root: string, f: ReleaseFiles, name: string, flag: string): string {
  const key = `${f.label}/${name}`;
  const done = tarballs.get(key);
  if (done) return done;
  const stage = join(root, `.stage-${f.label}`);
  if (!existsSync(stage)) {
    mkdirSync(join(stage, SIDECAR_DIR), { recursive: true });
    copyFileSync(f.runsc, join(stage, 'runsc'));
    copyFileSync(f.shim, join(stage, 'containerd-shim-runsc-v1'));
    for (const [n, src] of Object.entries(f.sidecars)) copyFileSync(src, join(stage, SIDECAR_DIR, n));
    for (const x of ['runsc', 'containerd-shim-runsc-v1', ...Object.keys(f.sidecars).map((n) => `${SIDECAR_DIR}/${n}`)]) chmodSync(join(stage, x), 0o755);
  }
  const out = join(root, `.${f.label}.${name}`);
  execFileSync('tar', [flag, '-cf', out, '-C', stage, 'runsc', 'containerd-shim-runsc-v1', SIDECAR_DIR]);
  tarballs.set(key, out);
  return out;
}

/** Serves `root` over HTTP on 127.0.0.1 from a child process (the tests' CLI calls block this one). */
export async function serveReleases(root: string): Promise<{ url: string; requests: () => string[]; close: () => void }> {
  const log = join(root, '.requests');
  writeFileSync(log, '');
  const src = `
    const http = require('node:http'), fs = require('node:fs'), path = require('node:path');
    const root = ${JSON.stringify(root)};
    const server = http.createServer((req, res) => {
      fs.appendFileSync(${JSON.stringify(log)}, req.url + '\\n');
      const p = path.join(root, decodeURIComponent(new URL(req.url, 'http://x').pathname));
      if (!p.startsWith(root + '/') || !fs.existsSync(p) || !fs.statSync(p).isFile()) { res.writeHead(404); return res.end('not found'); }
      res.writeHead(200, { 'content-length': fs.statSync(p).size });
      fs.createReadStream(p).pipe(res);
    });
    server.listen(0, '127.0.0.1', () => console.log(server.address().port));
    process.on('disconnect', () => process.exit(0));`;
  const child: ChildProcess = spawn(process.execPath, ['-e', src], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  const port = await new Promise<number>((res, rej) => {
    child.stdout!.once('data', (d: Buffer) => res(Number(d.toString().trim())));
    child.once('exit', (c) => rej(new Error(`release server exited ${c}`)));
  });
  return {
    url: `http://127.0.0.1:${port}`,
    requests: () => readFileSync(log, 'utf8').split('\n').filter(Boolean),
    close: () => child.kill('SIGTERM'),
  };
}
