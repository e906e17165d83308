// What a person or a CI log sees while the suites run. In a terminal: a line per finished check
// and suite and a live status line of what is running; in CI (no TTY): a line per check when it ends and a
// heartbeat every 30 s naming the checks still running, so a silent log never means "hung?".
import type { Reporter, TestCase, TestModule } from 'vitest/node';
import { classify, suiteOf } from './report.ts';
import { HEARTBEAT_MS } from './log.ts';
import { redact } from './redact.ts';

const stamp = () => new Date().toISOString().slice(11, 19);
const secs = (ms: number) => `${(ms / 1000).toFixed(1)}s`;

/** Whether progress may redraw a line (a terminal, not a CI log). */
export function liveTerminal(stream: NodeJS.WriteStream = process.stderr): boolean {
  return Boolean(stream.isTTY) && !process.env.CI;
}

export class ProgressReporter implements Reporter {
  private running = new Map<string, { title: string; since: number }>();
  private done = 0;
  private total = 0;
  private timer?: NodeJS.Timeout;
  private readonly live: boolean;

  constructor(
    private readonly out: NodeJS.WriteStream = process.stderr,
    /** Checks a rerun did not select: vitest reports them skipped, progress does not list them. */
    private readonly counts: (suite: string, node: string, name: string) => boolean = () => true,
  ) {
    this.live = liveTerminal(out);
  }

  private titleOf(t: TestCase): string {
    const node = t.parent.type === 'suite' ? t.parent.name : '-';
    return `${suiteOf(t.module.moduleId)} [${node}] ${t.name}`;
  }
  private wanted(t: TestCase): boolean {
    return this.counts(suiteOf(t.module.moduleId), t.parent.type === 'suite' ? t.parent.name : '-', t.name);
  }

  onTestRunStart(): void {
    const every = this.live ? 1000 : HEARTBEAT_MS;
    this.timer = setInterval(() => (this.live ? this.redraw() : this.heartbeat()), every);
    this.timer.unref();
  }

  onTestModuleCollected(m: TestModule): void {
    for (const t of m.children.allTests()) if (this.wanted(t)) this.total++;
  }

  onTestCaseReady(t: TestCase): void {
    if (!this.wanted(t)) return;
    this.running.set(t.id, { title: this.titleOf(t), since: Date.now() });
    this.redraw();
  }

  onTestCaseResult(t: TestCase): void {
    if (!this.wanted(t)) return;
    const started = this.running.get(t.id)?.since ?? Date.now();
    this.running.delete(t.id);
    const r = t.result();
    this.done++;
    const state = r.state === 'passed' ? 'PASS' : r.state === 'failed' ? (classify(r.errors) === 'failed' ? 'FAIL' : 'BROKEN') : 'SKIP';
    const why = r.state === 'failed' ? (r.errors ?? []).map((e) => e.message).join('; ') : r.state === 'skipped' ? (r.note ?? '') : '';
    const first = why.split('\n')[0]!.slice(0, 200);
    this.line(`${state.padEnd(6)} ${this.titleOf(t)} (${secs(t.diagnostic()?.duration ?? Date.now() - started)})${first ? ` — ${first}` : ''}`);
  }

  /** A line per suite file as it ends: its counts (checks a rerun did not select are not counted). */
  onTestModuleEnd(m: TestModule): void {
    const n = { passed: 0, failed: 0, broken: 0, skipped: 0 };
    for (const t of m.children.allTests()) {
      if (!this.wanted(t)) continue;
      const r = t.result();
      n[r.state === 'passed' ? 'passed' : r.state === 'failed' ? classify(r.errors) : 'skipped']++;
    }
    const counts = Object.entries(n).filter(([, v]) => v > 0).map(([k, v]) => `${v} ${k}`).join(', ') || 'no checks';
    this.line(`suite ${suiteOf(m.moduleId)} done: ${counts} (${secs(m.diagnostic().duration)})`);
  }

  onTestRunEnd(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.live) this.out.write('\r\x1b[K');
  }

  private line(text: string): void {
    if (this.live) this.out.write('\r\x1b[K');
    this.out.write(`${stamp()} ${redact(text)}\n`);
    this.redraw();
  }

  private redraw(): void {
    if (!this.live) return;
    const now = Date.now();
    const names = [...this.running.values()].map((r) => `${r.title} ${secs(now - r.since)}`);
    const text = `[${this.done}/${this.total || '?'}] ${names.length ? `running: ${names.join(' | ')}` : 'starting'}`;
    const width = (this.out.columns || 120) - 1;
    this.out.write(`\r\x1b[K${redact(text).slice(0, width)}`);
  }

  private heartbeat(): void {
    const now = Date.now();
    const long = [...this.running.values()].filter((r) => now - r.since >= HEARTBEAT_MS);
    if (long.length === 0) return;
    this.out.write(`${stamp()} … ${this.done}/${this.total} done; still running: ${long.map((r) => `${r.title} (${secs(now - r.since)})`).join(', ')}\n`);
  }
}
