import { execFileSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fingerprint, knownHostKeys, sh, sshBanner, waitForSshd } from '../../harness/node.ts';

const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-unit-node-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A fresh ed25519 key pair made by ssh-keygen: the public key line's type, base64 blob, and file. */
function keygen(name: string): { type: string; b64: string; pub: string } {
  const key = join(dir, name);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `${name}@unit`, '-f', key], { stdio: 'ignore' });
  const [type, b64] = readFileSync(`${key}.pub`, 'utf8').trim().split(/\s+/) as [string, string];
  return { type, b64, pub: `${key}.pub` };
}

/** known_hosts' hashed host form: |1|base64(salt)|base64(HMAC-SHA1(salt, host)). */
function hashedHost(host: string, salt = randomBytes(20)): string {
  return `|1|${salt.toString('base64')}|${createHmac('sha1', salt).update(host).digest('base64')}`;
}

let a: ReturnType<typeof keygen>;
let b: ReturnType<typeof keygen>;
beforeAll(() => {
  a = keygen('a');
  b = keygen('b');
});

const blobs = (keys: Buffer[]) => keys.map((k) => k.toString('base64'));

describe('fingerprint', () => {
  it("equals OpenSSH's SHA256 fingerprint (ssh-keygen -lf)", () => {
    for (const k of [a, b]) {
      const out = execFileSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', k.pub], { encoding: 'utf8' });
      const want = out.split(/\s+/)[1];
      expect(want).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
      expect(fingerprint(Buffer.from(k.b64, 'base64'))).toBe(want);
    }
    expect(fingerprint(Buffer.from(a.b64, 'base64'))).not.toBe(fingerprint(Buffer.from(b.b64, 'base64')));
  });

  it('matches the config schema format (43 base64 chars, no padding)', () => {
    expect(fingerprint(Buffer.from('x'))).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
  });
});

describe('knownHostKeys', () => {
  it('plain [host]:port entries for a non-22 port', () => {
    const kh = `[127.0.0.1]:2222 ${a.type} ${a.b64}\n[127.0.0.1]:2223 ${b.type} ${b.b64}\n127.0.0.1 ${b.type} ${b.b64}\n`;
    expect(blobs(knownHostKeys(kh, '127.0.0.1', 2222))).toEqual([a.b64]);
  });

  it('plain host form for port 22, and comma-separated host lists', () => {
    const kh = `node1.example,10.0.0.7 ${a.type} ${a.b64}\n[node1.example]:22 ${b.type} ${b.b64}\n`;
    expect(blobs(knownHostKeys(kh, '10.0.0.7', 22))).toEqual([a.b64]);
    expect(blobs(knownHostKeys(kh, 'node1.example', 22))).toEqual([a.b64]);
    expect(knownHostKeys(kh, 'node1', 22)).toEqual([]);
    expect(knownHostKeys(kh, '10.0.0.7', 2222)).toEqual([]);
  });

  it('several keys for one host are all returned', () => {
    const kh = `h ${a.type} ${a.b64}\nh ${b.type} ${b.b64} comment here\n`;
    expect(blobs(knownHostKeys(kh, 'h', 22))).toEqual([a.b64, b.b64]);
  });

  it('hashed |1|salt|hash entries (HMAC-SHA1 of the host pattern)', () => {
    const kh = [`${hashedHost('[127.0.0.1]:2222')} ${a.type} ${a.b64}`, `${hashedHost('127.0.0.1')} ${b.type} ${b.b64}`].join('\n');
    expect(blobs(knownHostKeys(kh, '127.0.0.1', 2222))).toEqual([a.b64]);
    expect(blobs(knownHostKeys(kh, '127.0.0.1', 22))).toEqual([b.b64]);
    expect(knownHostKeys(kh, '127.0.0.2', 22)).toEqual([]);
  });

  it('entries hashed by ssh-keygen -H are found', () => {
    const file = join(dir, 'known_hosts_hashed');
    writeFileSync(file, `[10.1.2.3]:2200 ${a.type} ${a.b64}\nother.example ${b.type} ${b.b64}\n`);
    execFileSync('ssh-keygen', ['-H', '-f', file], { stdio: 'ignore' });
    const kh = readFileSync(file, 'utf8');
    expect(kh).not.toContain('10.1.2.3');
    expect(kh).toContain('|1|');
    expect(blobs(knownHostKeys(kh, '10.1.2.3', 2200))).toEqual([a.b64]);
    expect(blobs(knownHostKeys(kh, 'other.example', 22))).toEqual([b.b64]);
    expect(knownHostKeys(kh, '10.1.2.3', 22)).toEqual([]);
  });

  it('malformed hashed entries, comments, blank and short lines are ignored', () => {
    const kh = [
      '# h ssh-ed25519 AAAAcomment',
      '',
      '   ',
      `|1|onlysalt ${a.type} ${a.b64}`,
      'h ssh-ed25519',
      `  h ${b.type} ${b.b64}  `,
    ].join('\n');
    expect(blobs(knownHostKeys(kh, 'h', 22))).toEqual([b.b64]);
  });

  it('@revoked lines never add a key', () => {
    const kh = `@revoked h ${a.type} ${a.b64}\nh ${b.type} ${b.b64}\n`;
    expect(blobs(knownHostKeys(kh, 'h', 22))).toEqual([b.b64]);
  });

  it('an empty file knows no keys', () => {
    expect(knownHostKeys('', '127.0.0.1', 22)).toEqual([]);
  });
});

describe('sh', () => {
  const roundTrip = (s: string) => execFileSync('/bin/sh', ['-c', `printf %s ${sh(s)}`], { encoding: 'utf8' });

  it.each([
    'plain',
    '',
    'with spaces  and\ttabs',
    "it's",
    "''",
    '"double" and \'single\'',
    '$HOME ${PATH} $(id -u) `id`',
    'back\\slash \\n',
    'semi; colon && or || pipe | amp &',
    'glob * ? [a-z] ~',
    'new\nline',
    '%s %d %%',
    '-n',
  ])('round-trips %j through /bin/sh', (s) => {
    expect(roundTrip(s)).toBe(s);
  });

  it('is a single quoted word', () => {
    expect(sh('a b')).toBe("'a b'");
    expect(sh("a'b")).toBe(`'a'\\''b'`);
  });
});

describe('knownHostKeys: markers (OpenSSH semantics)', () => {
  // Regression (was a bug): harness/node.ts knownHostKeys skips `@revoked` lines instead of honouring them: a key
  // that known_hosts revokes is still returned (and so trusted) when another line lists it.
  // sshd(8): a @revoked key "must not ever be accepted".
  it('a key revoked by an @revoked line is not trusted even if listed for the host', () => {
    const kh = `@revoked * ${a.type} ${a.b64}\nh ${a.type} ${a.b64}\nh ${b.type} ${b.b64}\n`;
    expect(blobs(knownHostKeys(kh, 'h', 22))).toEqual([b.b64]);
  });

  // Regression (was a bug): harness/node.ts knownHostKeys strips `@cert-authority` and returns the CA key as if it
  // were the host's own key. OpenSSH trusts such a key only to verify host certificates, so a
  // server presenting the bare CA key is not the host.
  it('an @cert-authority key is not a host key', () => {
    const kh = `@cert-authority h ${a.type} ${a.b64}\n`;
    expect(knownHostKeys(kh, 'h', 22)).toEqual([]);
  });
});

describe('waitForSshd', () => {
  /** A listener that sends `greeting` to each client (or nothing). */
  async function listener(greeting?: string): Promise<{ port: number; close: () => void }> {
    const srv = createServer((s) => (greeting ? s.end(greeting) : s.on('error', () => undefined)));
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    return { port: (srv.address() as AddressInfo).port, close: () => srv.close() };
  }

  it("returns the sshd's banner line, after lines before it", async () => {
    const l = await listener('hello\r\nSSH-2.0-OpenSSH_9.2p1 Debian-2\r\n');
    try {
      expect(await waitForSshd('test node a', l.port, 5000, { gone: () => undefined })).toBe('SSH-2.0-OpenSSH_9.2p1 Debian-2');
      expect(await sshBanner(l.port, 1000)).toBe('SSH-2.0-OpenSSH_9.2p1 Debian-2');
    } finally {
      l.close();
    }
  });

  it('times out naming the node and the port when something else answers', async () => {
    const l = await listener('HTTP/1.1 400 Bad Request\r\n\r\n');
    try {
      await expect(waitForSshd('VM b', l.port, 400, { gone: () => undefined, intervalMs: 50 })).rejects.toThrow(`waiting for sshd of VM b on 127.0.0.1:${l.port}`);
    } finally {
      l.close();
    }
  });

  it('gives up at once with the reason when the process serving it is gone', async () => {
    const t0 = Date.now();
    await expect(waitForSshd('test node c', 9, 10_000, { gone: () => 'qemu for VM c exited during boot' })).rejects.toThrow('qemu for VM c exited during boot');
    expect(Date.now() - t0).toBeLessThan(2000);
  });
});
