// What the harness itself costs while a CLI verb runs: CPU seconds and peak resident memory of its
// process tree (CLI, vitest workers, Allure's generator, tsx's esbuild), the node daemons it started
// left out, against all the CPU the machine used meanwhile (with other engineers' work set apart).
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { ROOT_DIR } from '../harness/paths.ts';

const TICK = 100; // USER_HZ: /proc times are in 1/100 s on Linux.
const PAGE_KIB = 4;

/**
 * Processes that belong to the nodes, not to the harness: the subtree under one is not counted,
 * even while the CLI that started it is still its parent (a host node's sshd is spawned detached by `up`).
 */
const NODE_DAEMON = /^(unshare|sshd|systemd-nspawn|systemd|containerd.*|runsc.*|dockerd|docker-proxy|kube-.*|kubelet|etcd|qemu-.*|pause)$/;
const NODE_MARKER = 'GVISOR_E2E_TESTBED_NODE=';

interface Proc {
  pid: number;
  ppid: number;
  comm: string;
  cpuTicks: number;
  rssKiB: number;
  start: number;
}

function readProcs(): Map<number, Proc> {
  const out = new Map<number, Proc>();
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const s = readFileSync(`/proc/${p}/stat`, 'utf8');
      const comm = s.slice(s.indexOf('(') + 1, s.lastIndexOf(')'));
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      // Fields after comm start at field 3 (state): ppid is 4, utime 14, stime 15, starttime 22, rss 24.
      out.set(Number(p), { pid: Number(p), ppid: Number(f[1]), comm, cpuTicks: Number(f[11]) + Number(f[12]), start: Number(f[19]), rssKiB: Number(f[21]) * PAGE_KIB });
    } catch {
      /* gone */
    }
  }
  return out;
}

/** Busy and total CPU seconds of the whole machine so far (/proc/stat; iowait counts as idle). */
export function machineCpu(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: (total - f[3]! - f[4]!) / TICK, total: total / TICK };
}

/** This machine: cores, memory, load. */
export function machine(): Record<string, unknown> {
  const mem = readFileSync('/proc/meminfo', 'utf8');
  const kib = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(mem)?.[1] ?? 0);
  return {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model,
    memoryGiB: +(totalmem() / 2 ** 30).toFixed(1),
    memoryAvailableGiB: +(kib('MemAvailable') / 2 ** 20).toFixed(1),
    loadAverage: loadavg().map((x) => +x.toFixed(2)),
    kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
    node: process.version,
  };
}

function isNodeProcess(p: Proc): boolean {
  if (NODE_DAEMON.test(p.comm)) return true;
  try {
    return readFileSync(`/proc/${p.pid}/environ`, 'utf8').includes(NODE_MARKER);
  } catch {
    return false;
  }
}

/** Someone else's work on this machine (another engineer's VMs, builds, tests): not this benchmark's run. */
function isForeign(p: Proc, ours: Set<number>): boolean {
  if (ours.has(p.pid) || p.pid === process.pid) return false;
  if (/^qemu-/.test(p.comm)) return true;
  try {
    const cwd = readlinkSync(`/proc/${p.pid}/cwd`);
    return cwd.startsWith('/work/') && !cwd.startsWith(ROOT_DIR);
  } catch {
    return false;
  }
}

export interface Measured {
  ms: number;
  code: number | null;
  stderr: string;
  /** CPU seconds of the harness's tree: the wrapper's children's rusage (every process the CLI waited for). */
  harnessCpuSeconds: number;
  /** The same from sampling /proc (also catches a child the CLI did not wait for); a cross-check. */
  harnessCpuSampledSeconds: number;
  /** All busy CPU of the machine meanwhile (/proc/stat). */
  machineBusyCpuSeconds: number;
  /** Of which other people's processes (qemu, other worktrees), sampled. */
  foreignCpuSeconds: number;
  /** Of which this benchmark process itself (its sampler). */
  benchCpuSeconds: number;
  /** The harness's share of the CPU this run caused (machine busy minus foreign minus the bench). */
  harnessShareOfRunCpu: number;
  harnessPeakRssMiB: number;
  /** What the tree held at its peak, by process kind. */
  peakBreakdownMiB: Record<string, number>;
  /** Each process kind's own peak (e.g. the CLI while the suites ran, before Allure's generator). */
  peakByRoleMiB: Record<string, number>;
  /** The CLI's timed steps (its "✔ step (N s)" lines), seconds; where the wall time went. */
  steps: Record<string, number>;
}

/** A process's role in the harness, from its command line. */
function role(pid: number, comm: string): string {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
    if (/vitest.*(forks|workers?)|node_modules\/vitest\/dist\/workers/.test(cmd)) return 'vitest worker';
    if (/allure/.test(cmd)) return 'allure';
    if (/gvisor-e2e(\.ts|\.js)/.test(cmd)) return 'cli';
    if (/esbuild/.test(comm)) return 'esbuild';
    return comm;
  } catch {
    return comm;
  }
}

/**
 * How the CLI is started: 'dist' is the built package (`npm run build`; what an installed gvisor-e2e
 * runs), 'tsx' is from source through tsx (`npm run gvisor-e2e`), whose loader costs memory of its own.
 */
export type Entry = 'dist' | 'tsx';
export const ENTRY: Entry = process.env.GVISOR_E2E_BENCH_ENTRY === 'tsx' ? 'tsx' : 'dist';

export function cliArgv(entry: Entry = ENTRY): string[] {
  return entry === 'tsx' ? [process.execPath, '--import', 'tsx', join(ROOT_DIR, 'bin/gvisor-e2e.ts')] : [process.execPath, join(ROOT_DIR, 'dist/bin/gvisor-e2e.js')];
}

/** Builds dist/ (the package's code) when the benchmark measures the built CLI. */
export function buildIfNeeded(entry: Entry = ENTRY): void {
  if (entry === 'dist') execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT_DIR, stdio: ['ignore', 'ignore', 'inherit'] });
}

/** Runs the CLI with `args` and measures the harness's own cost while it runs. */
export function cliMeasured(cfgPath: string, args: string[], intervalMs = 250, entry: Entry = ENTRY): Promise<Measured> {
  const work = mkdtempSync(join(tmpdir(), 'gvisor-e2e-measure-'));
  const timesFile = join(work, 'times');
  return new Promise((res) => {
    const m0 = machineCpu();
    const b0 = process.cpuUsage();
    const t0 = performance.now();
    // bash's `times` gives the rusage of its children: the CLI and every process the CLI waited for.
    const child = spawn('bash', ['-c', '"$@"; rc=$?; times > "$TIMES"; exit $rc', 'bash', ...cliArgv(entry), '--config', cfgPath, ...args], {
      cwd: ROOT_DIR,
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, TIMES: timesFile },
    });
    let stderr = '';
    let partial = '';
    const steps: Record<string, number> = {};
    child.stderr.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
      const lines = (partial + d.toString()).split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines) {
        const m = /✔ (.*) \(([\d.]+)s\)\s*$/.exec(l);
        if (m) steps[m[1]!.slice(0, 80)] = Number(m[2]);
      }
    });
    const seen = new Map<string, number>(); // pid:start → last cpu ticks (harness)
    const foreignSeen = new Map<string, number>();
    const classified = new Map<string, 'node' | 'foreign' | 'other'>();
    let harnessTicks = 0;
    let foreignTicks = 0;
    let peak = 0;
    let peakBreakdown: Record<string, number> = {};
    const peakByRole: Record<string, number> = {};
    const sample = () => {
      const procs = readProcs();
      const kids = new Map<number, number[]>();
      for (const p of procs.values()) kids.set(p.ppid, [...(kids.get(p.ppid) ?? []), p.pid]);
      const tree: number[] = [child.pid!];
      for (let i = 0; i < tree.length; i++) {
        for (const k of kids.get(tree[i]!) ?? []) {
          const p = procs.get(k)!;
          const key = `${k}:${p.start}`;
          // Only a node verdict is kept: a child forked by the CLI looks like it until it execs.
          if (classified.get(key) === 'node') continue;
          if (isNodeProcess(p)) classified.set(key, 'node');
          else tree.push(k);
        }
      }
      const ours = new Set(tree);
      let rss = 0;
      const breakdown: Record<string, number> = {};
      for (const pid of tree) {
        const p = procs.get(pid);
        if (!p) continue;
        rss += p.rssKiB;
        const r = role(pid, p.comm);
        breakdown[r] = (breakdown[r] ?? 0) + p.rssKiB;
        const key = `${pid}:${p.start}`;
        harnessTicks += p.cpuTicks - (seen.get(key) ?? 0);
        seen.set(key, p.cpuTicks);
      }
      for (const [k, v] of Object.entries(breakdown)) peakByRole[k] = Math.max(peakByRole[k] ?? 0, +(v / 1024).toFixed(0));
      if (rss > peak) {
        peak = rss;
        peakBreakdown = Object.fromEntries(Object.entries(breakdown).map(([k, v]) => [k, +(v / 1024).toFixed(0)]));
      }
      for (const p of procs.values()) {
        const key = `${p.pid}:${p.start}`;
        let c = classified.get(key);
        if (!c) classified.set(key, (c = isForeign(p, ours) ? 'foreign' : 'other'));
        if (c !== 'foreign') continue;
        // A foreign process that started before this measurement counts from its first sample on.
        const last = foreignSeen.get(key);
        if (last !== undefined) foreignTicks += p.cpuTicks - last;
        foreignSeen.set(key, p.cpuTicks);
      }
    };
    sample();
    const timer = setInterval(sample, intervalMs);
    child.on('exit', (code) => {
      clearInterval(timer);
      const ms = performance.now() - t0;
      const m1 = machineCpu();
      const b = process.cpuUsage(b0);
      let rusage = 0;
      try {
        // Second line: the children's user and system time, e.g. "0m12.345s 0m1.234s".
        const line = readFileSync(timesFile, 'utf8').trim().split('\n')[1] ?? '';
        for (const [, min, sec] of line.matchAll(/(\d+)m([\d.]+)s/g)) rusage += Number(min) * 60 + Number(sec);
      } catch {
        /* the wrapper was killed */
      }
      rmSync(work, { recursive: true, force: true });
      const busy = m1.busy - m0.busy;
      const bench = (b.user + b.system) / 1e6;
      const foreign = foreignTicks / TICK;
      const harness = Math.max(rusage, harnessTicks / TICK);
      res({
        ms,
        code,
        stderr,
        harnessCpuSeconds: +harness.toFixed(2),
        harnessCpuSampledSeconds: +(harnessTicks / TICK).toFixed(2),
        machineBusyCpuSeconds: +busy.toFixed(2),
        foreignCpuSeconds: +foreign.toFixed(2),
        benchCpuSeconds: +bench.toFixed(2),
        harnessShareOfRunCpu: +(harness / Math.max(0.01, busy - foreign - bench)).toFixed(3),
        harnessPeakRssMiB: +(peak / 1024).toFixed(0),
        peakBreakdownMiB: peakBreakdown,
        peakByRoleMiB: peakByRole,
        steps,
      });
    });
  });
}

/** Sums phases (up, install, run, down) into one: CPU adds up, the peak is the highest. */
export function combine(phases: Measured[]): Omit<Measured, 'code' | 'stderr' | 'peakBreakdownMiB' | 'peakByRoleMiB' | 'steps'> {
  const sum = (k: keyof Measured) => +phases.reduce((a, p) => a + (p[k] as number), 0).toFixed(2);
  const busy = sum('machineBusyCpuSeconds') - sum('foreignCpuSeconds') - sum('benchCpuSeconds');
  return {
    ms: sum('ms'),
    harnessCpuSeconds: sum('harnessCpuSeconds'),
    harnessCpuSampledSeconds: sum('harnessCpuSampledSeconds'),
    machineBusyCpuSeconds: sum('machineBusyCpuSeconds'),
    foreignCpuSeconds: sum('foreignCpuSeconds'),
    benchCpuSeconds: sum('benchCpuSeconds'),
    harnessShareOfRunCpu: +(sum('harnessCpuSeconds') / Math.max(0.01, busy)).toFixed(3),
    harnessPeakRssMiB: Math.max(...phases.map((p) => p.harnessPeakRssMiB)),
  };
}
