// The one retry loop: what is retried, the backoffs, and the error that ends it.
import { describe, expect, it } from 'vitest';
import { exponential, fixedDelays, retry } from '../../harness/retry.ts';

describe('backoffs', () => {
  it('fixedDelays gives one retry per entry', () => {
    const b = fixedDelays([10, 20]);
    expect([b(1, 0), b(2, 0), b(3, 0)]).toEqual([10, 20, undefined]);
  });
  it('exponential doubles to its cap and stops before the total is passed', () => {
    const b = exponential({ initialMs: 250, maxMs: 1000, totalMs: 3000 });
    expect([b(1, 0), b(2, 0), b(3, 0), b(4, 0)]).toEqual([250, 500, 1000, 1000]);
    expect(b(5, 2500)).toBeUndefined();
  });
});

describe('retry', () => {
  it('retries what is retryable, then succeeds', async () => {
    let n = 0;
    const r = await retry(async () => (++n < 3 ? Promise.reject(new Error('transient')) : 'ok'), { what: 't', backoff: fixedDelays([1, 1, 1]), retryable: () => true });
    expect([r, n]).toEqual(['ok', 3]);
  });
  it('gives up at once on a failure that is not retryable, without an attempt count', async () => {
    let n = 0;
    await expect(retry(async () => Promise.reject(new Error(`final ${++n}`)), { what: 't', backoff: fixedDelays([1]), retryable: () => false })).rejects.toThrow(/^final 1$/);
  });
  it('says how many attempts it took when the backoff runs out, or maps the error', async () => {
    await expect(retry(async () => Promise.reject(new Error('down')), { what: 't', backoff: fixedDelays([1, 1]), retryable: () => true })).rejects.toThrow('down (after 3 attempts)');
    await expect(retry(async () => Promise.reject(new Error('down')), { what: 't', backoff: fixedDelays([1]), retryable: () => true, giveUp: (e, a) => new Error(`gave up on ${(e as Error).message} after ${a}`) })).rejects.toThrow('gave up on down after 2');
  });
});
