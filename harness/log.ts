import { redact } from './redact.ts';

// Progress goes to stderr so that stdout carries only results (the nodes `up` lists, the report path `run` prints).
// Lines, not spinners: CI logs are not TTYs, and a line per step is what nightly logs need.

export type Level = 'debug' | 'info' | 'warn' | 'error';
let verbose = process.env.GVISOR_E2E_VERBOSE === '1';

export function setVerbose(v: boolean): void {
  verbose = v;
}

function stamp(): string {
  return new Date().toISOString().slice(11, 19);
}

export function log(level: Level, msg: string): void {
  if (level === 'debug' && !verbose) return;
  process.stderr.write(`${stamp()} ${level === 'info' ? '' : level.toUpperCase() + ' '}${redact(msg)}\n`);
}

/** Runs a long step with a start line, an end line with its duration, and a failure line. */
export async function step<T>(title: string, fn: () => Promise<T>): Promise<T> {
  const t0 = Date.now();
  log('info', `▶ ${title}`);
  try {
    const r = await fn();
    log('info', `✔ ${title} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
    return r;
  } catch (e) {
    log('error', `✘ ${title} (${((Date.now() - t0) / 1000).toFixed(1)}s): ${(e as Error).message}`);
    throw e;
  }
}
