import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { buildGVisor, SIDECAR_DIR } from '../harness/binaries.ts';
import { ROOT_DIR } from '../harness/paths.ts';

// Sandbox start cost with runsc's sidecars on disk (gvisor-bin/gvisor_sentry, as a release installs
// them) against the fallback runsc takes without them (DEFAULT policy: the sandbox boots with runsc
// itself). Same runsc binary, same host, runs interleaved so drift hits both alike. Measured with
// `runsc do true` (create, boot, run, tear down one sandbox), the sandbox path the sidecar changes.
// The prewarmer (C, not in the Go module) and the embedded checkpointgofer (used only to checkpoint)
// are not in this comparison: see the note in the result.

const N = Number(process.env.BENCH_SIDECAR_RUNS ?? 15);
const bins = await buildGVisor();
const work = mkdtempSync(join(tmpdir(), 'gvisor-e2e-bench-sidecars-'));
try {
  const withDir = join(work, 'with');
  const withoutDir = join(work, 'without');
  for (const d of [withDir, withoutDir]) {
    mkdirSync(d);
    copyFileSync(bins.runsc, join(d, 'runsc'));
    execFileSync('chmod', ['755', join(d, 'runsc')]);
  }
  mkdirSync(join(withDir, SIDECAR_DIR));
  for (const [name, file] of Object.entries(bins.sidecars)) {
    copyFileSync(file, join(withDir, SIDECAR_DIR, name));
    execFileSync('chmod', ['755', join(withDir, SIDECAR_DIR, name)]);
  }
  const once = (dir: string): number => {
    const t0 = performance.now();
    const r = spawnSync(join(dir, 'runsc'), ['--network=none', `--root=${join(work, 'state')}`, 'do', 'true'], { encoding: 'utf8', cwd: work });
    if (r.status !== 0) throw new Error(`runsc do true (${dir}) exited ${r.status}: ${r.stderr.slice(-600)}`);
    return performance.now() - t0;
  };
  once(withDir);
  once(withoutDir);
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < N; i++) {
    a.push(once(withDir));
    b.push(once(withoutDir));
  }
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  const result = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryGiB: +(totalmem() / 2 ** 30).toFixed(1), loadAverageAtStart: loadavg().map((x) => +x.toFixed(2)), kernel: execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim(), node: process.version },
    runsc: bins.expectedVersion,
    runs: N,
    sandboxStartMs: {
      sidecarsOnDisk: { median: +median(a).toFixed(1), min: +Math.min(...a).toFixed(1), max: +Math.max(...a).toFixed(1) },
      fallbackWithoutSidecars: { median: +median(b).toFixed(1), min: +Math.min(...b).toFixed(1), max: +Math.max(...b).toFixed(1) },
      ratio: +(median(a) / median(b)).toFixed(3),
    },
    note: 'ratio = on-disk sidecars / fallback (below 1: sidecars start faster). Sidecars on disk: gvisor_sentry built from the pinned module; without them runsc boots the sandbox with itself. Upstream\'s prewarmer (C) could not be built here, so its gain is not measured.',
  };
  const dir = join(ROOT_DIR, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `sidecars-${result.date.slice(0, 10)}.json`);
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  console.log(JSON.stringify(result, null, 2));
  console.log(`written to ${file}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
