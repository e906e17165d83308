// The one retry loop: transient failures are tried again after a backoff; the error that ends it
// says how many attempts were made. Callers say what is transient and how long to keep trying.
import { log } from './log.ts';

/** The wait before attempt `attempt + 1`, or undefined to give up (elapsedMs since the first attempt). */
export type Backoff = (attempt: number, elapsedMs: number) => number | undefined;

/** Fixed waits: one retry per entry. */
export const fixedDelays =
  (delaysMs: number[]): Backoff =>
  (attempt) =>
    delaysMs[attempt - 1];

/** initialMs doubling up to maxMs, until the next wait would pass totalMs. */
export const exponential =
  (o: { initialMs: number; maxMs: number; totalMs: number }): Backoff =>
  (attempt, elapsedMs) => {
    const d = Math.min(o.initialMs * 2 ** (attempt - 1), o.maxMs);
    return elapsedMs + d > o.totalMs ? undefined : d;
  };

export interface RetryOptions {
  backoff: Backoff;
  /** Whether this failure is worth another attempt. */
  retryable(e: unknown, attempt: number): boolean;
  /** Names what is retried in the log line of each retry. */
  what: string;
  /** The error to throw when giving up (default: the last one, its message saying how many attempts). */
  giveUp?(e: unknown, attempts: number): unknown;
  logLevel?: 'debug' | 'warn';
}

export async function retry<T>(fn: (attempt: number) => Promise<T>, o: RetryOptions): Promise<T> {
  const started = Date.now();
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (e) {
      const delay = o.retryable(e, attempt) ? o.backoff(attempt, Date.now() - started) : undefined;
      if (delay === undefined) throw o.giveUp ? o.giveUp(e, attempt) : withAttempts(e, attempt);
      log(o.logLevel ?? 'warn', `${o.what}: ${String((e as Error).message ?? e).split('\n')[0]!.slice(0, 200)}; retrying in ${delay}ms`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

/** The error, its message saying how many attempts it took (when more than one). */
export function withAttempts(e: unknown, attempts: number): unknown {
  if (attempts > 1 && e instanceof Error) e.message += ` (after ${attempts} attempts)`;
  return e;
}
