// Waiting for a condition: polled (until), or checked on events with a tick as the safety net (untilWoken).
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

/**
 * Waits until check() returns a value. check() runs at once, on every wake() from the events that
 * `events` wires up (a watch, a stream), and every `tickMs` as the safety net for lost or missing
 * events; never two at once (a wake during a check is covered by the next tick). A throw from
 * check() gives up. The timeout names what was awaited (`what` is read then, so it can carry the
 * last state seen). `events` returns how to stop them, called once the wait ends.
 */
export function untilWoken<T>(
  what: string | (() => string),
  timeoutMs: number,
  check: () => Promise<T | undefined>,
  o: { tickMs?: number; events?: (wake: () => void) => (() => void) | void } = {},
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let finished = false;
    let checking = false;
    let stopEvents: (() => void) | void;
    const finish = (err: unknown, value?: T) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      clearInterval(ticker);
      stopEvents?.();
      if (err) reject(err);
      else resolve(value as T);
    };
    const wake = () => {
      if (finished || checking) return;
      checking = true;
      check().then(
        (v) => {
          checking = false;
          if (v !== undefined) finish(undefined, v);
        },
        (e: unknown) => {
          checking = false;
          finish(e);
        },
      );
    };
    const timer = setTimeout(() => finish(new TimeoutError(typeof what === 'function' ? what() : what, timeoutMs)), timeoutMs);
    const ticker = setInterval(wake, o.tickMs ?? 1000);
    try {
      stopEvents = o.events?.(wake);
    } catch (e) {
      finish(e);
    }
    wake();
  });
}
