// Fan-out: the node-level suites against 1, 10, … SSH nodes (host nodes on this machine, each an
// sshd + containerd + gVisor in namespaces of its own). Measures, per size and verb (up, install,
// run, down): wall time, the harness's own CPU seconds and their share of the CPU the run used, and
// the peak memory of the harness's process tree (CLI, vitest workers, Allure), node daemons left out.
// Usage: npx tsx bench/fanout.ts [sizes…]   (default 1 10 50; the built CLI, GVISOR_E2E_BENCH_ENTRY=tsx for source)
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { ROOT_DIR } from '../harness/paths.ts';
import { buildIfNeeded, cliMeasured, combine, ENTRY, machine, type Measured } from './measure.ts';

const sizes = (process.argv.slice(2).length ? process.argv.slice(2) : ['1', '10', '50']).map(Number);
const SUITES = ['runsc-installation', 'sandbox-dmesg', 'net-raw', 'limit-nofile'];

const brief = (m: Measured) => {
  const { code, stderr, ...rest } = m;
  return { ...rest, ms: +m.ms.toFixed(0), ...(code === 0 ? {} : { code, stderr: stderr.slice(-1500) }) };
};

buildIfNeeded();
const results: Record<string, unknown>[] = [];
const machineAtStart = machine();
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
  const before = machine();
  const up = await cliMeasured(cfg, ['up']);
  const install = await cliMeasured(cfg, ['install']);
  const run = await cliMeasured(cfg, ['run', '--keep', '--no-install', '--suite', ...SUITES]);
  let summary: { state: string; checks: unknown[] } = { state: 'missing', checks: [] };
  try {
    summary = JSON.parse(readFileSync(join(dir, 'reports', 'latest', 'summary.json'), 'utf8')) as typeof summary;
  } catch {
    /* reported as missing */
  }
  const down = await cliMeasured(cfg, ['down']);
  rmSync(dir, { recursive: true, force: true });
  const all = combine([up, install, run, down]);
  const r = {
    nodes: n,
    machineBefore: before,
    loadAverageAfter: machine().loadAverage,
    state: summary.state,
    checks: summary.checks.length,
    upSeconds: +(up.ms / 1000).toFixed(1),
    installSeconds: +(install.ms / 1000).toFixed(1),
    suitesSeconds: +(run.ms / 1000).toFixed(1),
    harnessPeakRssMiB: all.harnessPeakRssMiB,
    harnessCpuSeconds: all.harnessCpuSeconds,
    harnessShareOfRunCpu: all.harnessShareOfRunCpu,
    harnessShareOfSuitesCpu: run.harnessShareOfRunCpu,
    allVerbs: all,
    verbs: { up: brief(up), install: brief(install), run: brief(run), down: brief(down) },
  };
  console.log(JSON.stringify({ nodes: n, state: r.state, checks: r.checks, suitesSeconds: r.suitesSeconds, peak: r.harnessPeakRssMiB, cpu: r.harnessCpuSeconds, share: r.harnessShareOfRunCpu, suitesShare: r.harnessShareOfSuitesCpu, breakdown: run.peakBreakdownMiB, byRole: run.peakByRoleMiB, installPeak: install.harnessPeakRssMiB }));
  results.push(r);
}
const at50 = results.find((r) => r.nodes === 50) as { harnessPeakRssMiB: number; harnessShareOfRunCpu: number; harnessShareOfSuitesCpu: number } | undefined;
const out = {
  date: new Date().toISOString(),
  machine: machineAtStart,
  cli: ENTRY === 'dist' ? 'built package: node dist/bin/gvisor-e2e.js' : 'from source: node --import tsx bin/gvisor-e2e.ts',
  how: 'harness = the CLI process tree (CLI, vitest workers, Allure generator, esbuild), node daemons (sshd, containerd, runsc, …) left out; CPU = rusage of the CLI and every process it waited for (and /proc sampling as a cross-check); share = harness CPU / (machine busy CPU from /proc/stat − other people\'s processes (qemu, other worktrees) − this benchmark process)',
  fanout: results,
  targets: at50
    ? {
        harnessPeakRssAt50NodesUnder300MB: { value: `${at50.harnessPeakRssMiB} MiB (${(at50.harnessPeakRssMiB * 1.048576).toFixed(0)} MB)`, met: at50.harnessPeakRssMiB * 1.048576 <= 300 },
        harnessCpuAt50NodesUnder10Percent: { value: `${(at50.harnessShareOfRunCpu * 100).toFixed(1)}% (suites verb alone ${(at50.harnessShareOfSuitesCpu * 100).toFixed(1)}%)`, met: at50.harnessShareOfRunCpu <= 0.1 },
      }
    : undefined,
};
const file = join(ROOT_DIR, 'bench', 'results', `fanout-${new Date().toISOString().slice(0, 10)}${ENTRY === 'tsx' ? '-tsx' : ''}.json`);
writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
console.log(`written to ${file}`);
