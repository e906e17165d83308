import { describe, expect, it } from 'vitest';
import { mapLimit, settleAll } from '../../harness/map-limit.ts';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('mapLimit', () => {
  it('keeps at most `limit` in flight and returns results in input order', async () => {
    let inFlight = 0;
    let most = 0;
    const out = await mapLimit([30, 10, 20, 5, 15], 2, async (ms) => {
      most = Math.max(most, ++inFlight);
      await tick(ms);
      inFlight--;
      return ms * 2;
    });
    expect(out).toEqual([60, 20, 40, 10, 30]);
    expect(most).toBe(2);
  });
});

describe('settleAll', () => {
  it('waits for every build before it throws the first failure', async () => {
    const done: string[] = [];
    const slow = tick(40).then(() => done.push('slow'));
    const failing = tick(5).then(() => {
      throw new Error('go build failed');
    });
    await expect(settleAll([failing, slow])).rejects.toThrow('go build failed');
    // The slow one had finished by the time the error came out: nothing left running behind it.
    expect(done).toEqual(['slow']);
  });

  it('resolves when every promise does', async () => {
    await expect(settleAll([tick(1), Promise.resolve(3)])).resolves.toBeUndefined();
  });
});
