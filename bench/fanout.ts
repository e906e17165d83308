import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { ROOT_DIR } from '../harness/paths.ts';

// Fan-out: the node-level suites against 1, 10, … SSH nodes (host nodes on this machine, each an
// sshd + containerd + gVisor in namespaces of its own). Measures, per size: up, install and suite
// wall time, and the peak memory of the harness's process tree (CLI + vitest workers).
// Usage: npx tsx bench/fanout.ts [sizes…]   (default 1 10)

const sizes = (process.argv.slice(2).length ? process.argv.slice(2) : ['1', '10']).map(Number);

/** Runs the CLI and samples the resident memory of its whole process tree. */
function cliMeasured(cfg: string, args: string[]): Promise<{ ms: number; code: number | null; peakMiB: number; stderr: string }> {
  return new Promise((res) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT_DIR, 'bin/gvisor-e2e.ts'), '--config', cfg, ...args], { cwd: ROOT_DIR, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    let peak = 0;
    const timer = setInterval(() => {
      const tree = descendants(child.pid!);
      const rss = tree.reduce((sum, p) => sum + rssKiB(p), 0);
      peak = Math.max(peak, rss);
    }, 200);
    child.on('exit', (code) => {
      clearInterval(timer);
      res({ ms: performance.now() - t0, code, peakMiB: +(peak / 1024).toFixed(0), stderr });
    });
  });
}

function descendants(pid: number): number[] {
  const kids = new Map<number, number[]>();
  for (const p of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      const ppid = Number(readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
      kids.set(ppid, [...(kids.get(ppid) ?? []), Number(p)]);
    } catch {
      /* gone */
    }
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) out.push(...(kids.get(out[i]!) ?? []));
  // Only the harness's own processes: node daemons (sshd, containerd) are started detached by the provider.
  return out.filter((p) => {
    try {
      return /node|tsx|vitest/.test(readFileSync(`/proc/${p}/comm`, 'utf8'));
    } catch {
      return false;
    }
  });
}

function rssKiB(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

const results: Record<string, unknown>[] = [];
const loadAverageAtStart = loadavg().map((x) => +x.toFixed(2));
for (const n of sizes) {
  const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-fanout-'));
  const cfg = join(dir, 'c.yaml');
  writeFileSync(
    cfg,
    stringify({
      apiVersion: 'gvisor-e2e.dev/v1alpha1',
      kind: 'Config',
      cluster: { provider: 'local', name: `fan${n}-${process.pid}`, pools: [{ name: 'gvisor', nodes: n, kind: 'host' }] },
      gvisor: { pools: ['gvisor'] },
      reportsDir: join(dir, 'reports'),
    }),
  );
  const up = await cliMeasured(cfg, ['up']);
  const inst = await cliMeasured(cfg, ['install']);
  const run = await cliMeasured(cfg, ['run', '--keep', '--no-install', '--suite', 'runsc-installation', 'sandbox-dmesg', 'net-raw', 'limit-nofile']);
  const summary = JSON.parse(readFileSync(join(dir, 'reports', 'latest', 'summary.json'), 'utf8')) as { state: string; checks: unknown[] };
  await cliMeasured(cfg, ['down']);
  const r = {
    nodes: n,
    upSeconds: +(up.ms / 1000).toFixed(1),
    installSeconds: +(inst.ms / 1000).toFixed(1),
    suitesSeconds: +(run.ms / 1000).toFixed(1),
    state: summary.state,
    checks: summary.checks.length,
    harnessPeakMiB: Math.max(up.peakMiB, inst.peakMiB, run.peakMiB),
  };
  console.log(JSON.stringify(r));
  results.push(r);
}
const out = {
  date: new Date().toISOString(),
  machine: { cpus: cpus().length, memoryGiB: +(totalmem() / 2 ** 30).toFixed(1), loadAverageAtStart },
  fanout: results,
};
const file = join(ROOT_DIR, 'bench', 'results', `fanout-${new Date().toISOString().slice(0, 10)}.json`);
writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
console.log(`written to ${file}`);
