import { TimeoutError } from './errors.ts';

/**
 * Polls until ok() holds. The timeout names what was awaited; `what` may be a function so the
 * message can carry the last state seen. ok() may throw to give up early (a daemon that exited).
 */
export async function until(what: string | (() => string), timeoutMs: number, ok: () => Promise<boolean> | boolean, intervalMs = 500): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new TimeoutError(typeof what === 'function' ? what() : what, timeoutMs);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
