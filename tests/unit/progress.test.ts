// Progress while the suites run: in a CI log a line per check when it ends and a heartbeat naming
// checks that run long; in a terminal a live status line redrawn in place.
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { TestCase, TestModule } from 'vitest/node';
import { HEARTBEAT_MS } from '../../harness/log.ts';
import { ProgressReporter } from '../../harness/progress.ts';

function stream(isTTY: boolean) {
  const out: string[] = [];
  return { out, s: { isTTY, columns: 200, write: (t: string) => (out.push(t), true) } as unknown as NodeJS.WriteStream };
}

const tc = (id: string, name: string, state: 'passed' | 'failed' | 'skipped' | 'pending', message?: string) =>
  ({
    id,
    name,
    parent: { type: 'suite', name: 'gvisor-1' },
    module: { moduleId: '/x/suites/net-raw/net-raw.suite.ts' },
    options: { mode: 'run' },
    result: () => ({ state, errors: message ? [{ name: 'AssertionError', message }] : undefined, note: state === 'skipped' ? 'no SSH access' : undefined }),
    diagnostic: () => ({ duration: 1234 }),
  }) as unknown as TestCase;

afterEach(() => {
  vi.useRealTimers();
});

describe('ProgressReporter', () => {
  it('in a CI log: one line per check as it ends, with its verdict, time and first line of the reason', () => {
    const { out, s } = stream(false);
    const p = new ProgressReporter(s);
    p.onTestRunStart();
    p.onTestCaseReady(tc('a', 'ping refused', 'pending'));
    p.onTestCaseResult(tc('a', 'ping refused', 'failed', 'ping answered\nstack'));
    p.onTestCaseResult(tc('b', 'boot log', 'passed'));
    p.onTestCaseResult(tc('c', 'api', 'skipped'));
    const tests = [tc('a', 'ping refused', 'failed', 'ping answered'), tc('b', 'boot log', 'passed'), tc('c', 'api', 'skipped')];
    p.onTestModuleEnd({ moduleId: '/x/suites/net-raw/net-raw.suite.ts', diagnostic: () => ({ duration: 4000 }), children: { allTests: () => tests[Symbol.iterator]() } } as unknown as TestModule);
    p.onTestRunEnd();
    expect(out.join('')).not.toContain('\x1b');
    const lines = out.join('').trim().split('\n').map((l) => l.slice(9));
    expect(lines).toEqual(['FAIL   net-raw [gvisor-1] ping refused (1.2s) — ping answered', 'PASS   net-raw [gvisor-1] boot log (1.2s)', 'SKIP   net-raw [gvisor-1] api (1.2s) — no SSH access', 'suite net-raw done: 1 passed, 1 failed, 1 skipped (4.0s)']);
  });

  it('in a CI log: a heartbeat names the checks running longer than the interval', () => {
    vi.useFakeTimers();
    const { out, s } = stream(false);
    const p = new ProgressReporter(s);
    p.onTestRunStart();
    p.onTestCaseReady(tc('a', 'slow check', 'pending'));
    vi.advanceTimersByTime(HEARTBEAT_MS - 1);
    expect(out).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(out.join('')).toMatch(/… 0\/0 done; still running: net-raw \[gvisor-1\] slow check \(30\.0s\)\n$/);
    p.onTestRunEnd();
  });

  it('in a terminal: a live line redrawn in place, cleared before each result line', () => {
    const { out, s } = stream(true);
    const prev = process.env.CI;
    delete process.env.CI;
    try {
      const p = new ProgressReporter(s);
      p.onTestRunStart();
      p.onTestCaseReady(tc('a', 'ping refused', 'pending'));
      expect(out.at(-1)).toMatch(/^\r\x1b\[K\[0\/\?\] running: net-raw \[gvisor-1\] ping refused 0\.0s$/);
      p.onTestCaseResult(tc('a', 'ping refused', 'passed'));
      expect(out.slice(-3)[0]).toBe('\r\x1b[K');
      expect(out.slice(-3)[1]).toMatch(/PASS {3}net-raw \[gvisor-1\] ping refused/);
      p.onTestRunEnd();
    } finally {
      if (prev !== undefined) process.env.CI = prev;
    }
  });
});
