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

/** How often a long step says it is still running (CI kills jobs whose log stays silent). */
export const HEARTBEAT_MS = Number(process.env.GVISOR_E2E_HEARTBEAT_MS) || 30_000;

/**
 * Runs a long step with a start line, an end line with its duration, and a failure line; every
 * HEARTBEAT_MS in between, a line saying it is still running.
 */
export async function step<T>(title: string, fn: () => Promise<T>): Promise<T> {
  const t0 = Date.now();
  log('info', `▶ ${title}`);
  const beat = setInterval(() => log('info', `… ${title} (still running, ${Math.round((Date.now() - t0) / 1000)}s)`), HEARTBEAT_MS);
  beat.unref();
  try {
    const r = await fn();
    log('info', `✔ ${title} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
    return r;
  } catch (e) {
    log('error', `✘ ${title} (${((Date.now() - t0) / 1000).toFixed(1)}s): ${(e as Error).message}`);
    throw e;
  } finally {
    clearInterval(beat);
  }
}
