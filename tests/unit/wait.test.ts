// The wait helpers: a check woken by events and by a tick, serialized, with a timeout naming what it waited for.
import { describe, expect, it } from 'vitest';
import { TimeoutError } from '../../harness/errors.ts';
import { untilWoken } from '../../harness/wait.ts';

describe('untilWoken', () => {
  it('checks at once, on events and on the tick, one check at a time, and stops the events when done', async () => {
    let state = 0;
    let running = 0;
    let most = 0;
    let stopped = 0;
    const v = await untilWoken(
      'state 3',
      5000,
      async () => {
        most = Math.max(most, ++running);
        await new Promise((r) => setTimeout(r, 20));
        running--;
        return state >= 3 ? state : undefined;
      },
      {
        tickMs: 10_000,
        events: (wake) => {
          // Bursts of events: each event may wake a check, but never a second one beside it.
          const t = setInterval(() => (state++, wake(), wake(), wake()), 30);
          return () => (clearInterval(t), stopped++);
        },
      },
    );
    expect(v).toBeGreaterThanOrEqual(3);
    expect(most).toBe(1);
    expect(stopped).toBe(1);
  });

  it('the tick covers a source without events', async () => {
    let n = 0;
    expect(await untilWoken('n to reach 3', 5000, async () => (++n >= 3 ? 'ok' : undefined), { tickMs: 10 })).toBe('ok');
  });

  it('times out naming what it waited for, read at that moment', async () => {
    let seen = 'nothing';
    const e = await untilWoken(() => `pod x to finish (last: ${seen})`, 100, async () => ((seen = 'Pending'), undefined), { tickMs: 10 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(TimeoutError);
    expect((e as Error).message).toContain('pod x to finish (last: Pending)');
  });

  it('a throwing check gives up with its error', async () => {
    let stopped = false;
    const e = await untilWoken('never', 5000, async () => Promise.reject(new Error('daemon exited')), { events: () => () => (stopped = true) }).catch((x: unknown) => x);
    expect((e as Error).message).toBe('daemon exited');
    expect(stopped).toBe(true);
  });
});
