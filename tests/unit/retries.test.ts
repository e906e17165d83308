import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { nodeConfig } from '../../harness/config.ts';
import { importTestImage } from '../../harness/image.ts';
import { api, isTransientApiError } from '../../harness/kube.ts';
import { LocalNode } from '../../harness/node.ts';

// Transient infrastructure errors are retried with backoff; anything else fails at once, and a
// failure that outlasts the retries says how many attempts were made.

const refused = () => Object.assign(new Error('request to https://10.217.1.1:6443/api/v1/nodes failed, reason: connect ECONNREFUSED 10.217.1.1:6443'), { code: 'ECONNREFUSED' });
const http = (code: number, message: string) => Object.assign(new Error(`HTTP-Code: ${code}`), { code, body: JSON.stringify({ message }) });

describe('Kubernetes API calls', () => {
  it('classifies connection failures and 429/5xx-unavailable as transient, other answers as final', () => {
    expect(isTransientApiError(refused())).toBe(true);
    expect(isTransientApiError(Object.assign(new Error('fetch failed'), { cause: { code: 'ECONNRESET' } }))).toBe(true);
    expect(isTransientApiError(new Error('socket hang up'))).toBe(true);
    expect(isTransientApiError(http(503, 'unavailable'))).toBe(true);
    expect(isTransientApiError(http(429, 'too many requests'))).toBe(true);
    for (const c of [400, 403, 404, 409, 422, 500]) expect(isTransientApiError(http(c, 'no')), String(c)).toBe(false);
  });

  it('retries a refused connection until the API server answers', async () => {
    let calls = 0;
    const r = await api('listing nodes', async () => {
      if (++calls < 3) throw refused();
      return 'ok';
    });
    expect(r).toBe('ok');
    expect(calls).toBe(3);
  });

  it('gives up at the deadline, naming the call, the cause and the attempts', async () => {
    let calls = 0;
    const t0 = Date.now();
    const e = await api('reading pod ns/p', async () => {
      calls++;
      throw refused();
    }, { retryMs: 1000 }).catch((x: Error) => x);
    expect(Date.now() - t0).toBeLessThan(2500);
    expect(e).toBeInstanceOf(Error);
    expect((e as Error).name).toBe('InfrastructureError');
    expect((e as Error).message).toMatch(/^reading pod ns\/p: request to .* ECONNREFUSED .* \(after \d+ attempts\)$/);
    expect(calls).toBeGreaterThan(1);
  });

  it('does not retry a final answer', async () => {
    let calls = 0;
    const e = await api('creating pod ns/p', async () => {
      calls++;
      throw http(422, 'Pod "p" is invalid');
    }).catch((x: Error) => x);
    expect(calls).toBe(1);
    expect((e as Error).message).toBe('creating pod ns/p: HTTP 422: Pod "p" is invalid');
  });

  it('a create whose first attempt was cut off and whose retry finds it (409) succeeded', async () => {
    let calls = 0;
    await api('creating namespace x', async () => {
      if (++calls === 1) throw Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' });
      throw http(409, 'namespaces "x" already exists');
    }, { created: true });
    expect(calls).toBe(2);
    // Without a lost first attempt, 409 is an error.
    await expect(api('creating namespace x', async () => Promise.reject(http(409, 'already exists')), { created: true })).rejects.toThrow('HTTP 409');
  });
});

describe('test image import', () => {
  // A `ctr` on PATH that fails the first N imports with the given error, then records the images.
  const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-unit-ctr-'));
  const archive = join(dir, 'image.tar');
  writeFileSync(archive, 'archive');
  const img = { archive, image: 'gvisor-e2e.local/busybox:t', pause: 'gvisor-e2e.local/pause:t', id: 'sha256:1111' };
  const node = new LocalNode(nodeConfig({ name: 'local-1', pool: 'p', access: { type: 'local' } }));
  const path = process.env.PATH;
  afterEach(() => {
    process.env.PATH = path;
  });

  function fakeCtr(failures: number, error: string): string {
    const bin = mkdtempSync(join(dir, 'bin-'));
    writeFileSync(
      join(bin, 'ctr'),
      `#!/bin/sh
S=${bin}
case "$*" in
  *"images ls"*) cat "$S/images" 2>/dev/null; exit 0 ;;
  *"images import"*)
    n=$(cat "$S/count" 2>/dev/null || echo 0); echo $((n+1)) > "$S/count"
    if [ "$n" -lt ${failures} ]; then echo '${error}' >&2; exit 1; fi
    printf '${img.image}\\n${img.pause}\\n' > "$S/images"; exit 0 ;;
esac
exit 2
`,
    );
    chmodSync(join(bin, 'ctr'), 0o755);
    process.env.PATH = `${bin}:${path}`;
    return bin;
  }

  it('an import race (transient ctr error) is retried with backoff until it succeeds', async () => {
    const bin = fakeCtr(2, 'ctr: failed to commit sha256:abc: content sha256:abc: already exists');
    await importTestImage(node, img, '/run/x.sock', dir, [10, 20, 40]);
    expect(readFileSync(join(bin, 'count'), 'utf8').trim()).toBe('3');
  });

  it('a persistent transient error ends broken, with the attempts counted', async () => {
    fakeCtr(10, 'ctr: rpc error: code = Unavailable desc = connection error: transport is closing');
    await expect(importTestImage(node, img, '/run/x.sock', dir, [10, 20])).rejects.toThrow(
      /^\[local-1\] importing the test image with `ctr images import` failed \(after 3 attempts\): exit 1: ctr: rpc error: code = Unavailable/,
    );
  });

  it('a final error (a corrupt archive) is not retried', async () => {
    const bin = fakeCtr(10, 'ctr: unrecognized image format');
    await expect(importTestImage(node, img, '/run/x.sock', dir, [10, 20])).rejects.toThrow('failed: exit 1: ctr: unrecognized image format');
    expect(readFileSync(join(bin, 'count'), 'utf8').trim()).toBe('1');
  });
});
