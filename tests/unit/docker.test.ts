// The Docker API node access without an engine: the exec stream demultiplexer, finding the engine
// as the docker CLI does, the unix-socket forwarder's choice of program and byte-exact relaying (run
// here as local processes against a local echo server, the same script the node runs), and errors
// from a stand-in engine that stalls or lacks the container.
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { contextModemOptions, dockerClient, DockerStreamDemuxer, engineAddress, engineEndpoint, forwarderArgv, forwarderConnected, FORWARDER_READY, killTaggedScript, runInContainer } from '../../harness/docker.ts';

const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-unit-docker-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function frame(stream: 1 | 2, data: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h[0] = stream;
  h.writeUInt32BE(data.length, 4);
  return Buffer.concat([h, data]);
}

function demuxAll(chunks: Buffer[]): { stdout: Buffer; stderr: Buffer; truncated?: string } {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const d = new DockerStreamDemuxer((s, b) => (s === 'stdout' ? out : err).push(Buffer.from(b)));
  for (const c of chunks) d.write(c);
  return { stdout: Buffer.concat(out), stderr: Buffer.concat(err), truncated: d.truncated() };
}

describe('DockerStreamDemuxer', () => {
  const a = randomBytes(70_000);
  const b = Buffer.from('error line\n');
  const c = Buffer.from([0, 1, 2, 0xff, 0x0a, 0x0d]);
  const wire = Buffer.concat([frame(1, a), frame(2, b), frame(1, Buffer.alloc(0)), frame(1, c), frame(2, b)]);

  it('splits stdout and stderr frames, byte for byte, however the connection chunks them', () => {
    const want = { stdout: Buffer.concat([a, c]), stderr: Buffer.concat([b, b]) };
    for (const size of [1, 3, 7, 8, 9, 4096, wire.length]) {
      const chunks: Buffer[] = [];
      for (let i = 0; i < wire.length; i += size) chunks.push(wire.subarray(i, i + size));
      const got = demuxAll(chunks);
      expect(got.stdout.equals(want.stdout), `chunk size ${size}`).toBe(true);
      expect(got.stderr.equals(want.stderr), `chunk size ${size}`).toBe(true);
      expect(got.truncated).toBeUndefined();
    }
  });

  it('says when the connection ended inside a header or a frame', () => {
    expect(demuxAll([wire.subarray(0, 5)]).truncated).toBe('5 bytes of a frame header');
    expect(demuxAll([wire.subarray(0, 8 + 100)]).truncated).toBe(`a frame with ${a.length - 100} bytes still to come`);
  });

  it('rejects a stream that is not multiplexed (a TTY stream, or one out of step)', () => {
    expect(() => demuxAll([Buffer.from('hello world, no header')])).toThrow(/not multiplexed as expected: frame header 68656c6c6f20776f/);
    expect(() => demuxAll([frame(3 as 1, c)])).toThrow(/frame header 03000000/);
  });
});

describe('engine endpoint, as the docker CLI resolves it', () => {
  const home = join(dir, 'home');
  const cfg = join(home, '.docker');
  /** A context in the CLI's store: contexts/meta/<sha256 of name>/meta.json, TLS files beside. */
  function context(name: string, host: string, tls = false): void {
    const id = createHash('sha256').update(name).digest('hex');
    mkdirSync(join(cfg, 'contexts', 'meta', id), { recursive: true });
    writeFileSync(join(cfg, 'contexts', 'meta', id, 'meta.json'), JSON.stringify({ Name: name, Metadata: {}, Endpoints: { docker: { Host: host, SkipTLSVerify: false } } }));
    if (tls) {
      mkdirSync(join(cfg, 'contexts', 'tls', id, 'docker'), { recursive: true });
      for (const f of ['ca.pem', 'cert.pem', 'key.pem']) writeFileSync(join(cfg, 'contexts', 'tls', id, 'docker', f), `${f}\n`);
    }
  }
  beforeAll(() => {
    mkdirSync(cfg, { recursive: true });
    context('colima', 'unix:///home/u/.colima/default/docker.sock');
    context('remote', 'tcp://10.0.0.5:2376', true);
    context('viassh', 'ssh://ci@build-host:2222');
    writeFileSync(join(cfg, 'config.json'), JSON.stringify({ currentContext: 'colima' }));
  });

  it('DOCKER_HOST wins over any context', () => {
    expect(engineEndpoint({ HOME: home, DOCKER_HOST: 'unix:///tmp/x/docker.sock', DOCKER_CONTEXT: 'remote' })).toEqual({ host: 'unix:///tmp/x/docker.sock' });
    expect(engineAddress({ HOME: home, DOCKER_HOST: 'unix:///tmp/x/docker.sock' })).toBe('unix:///tmp/x/docker.sock');
  });

  it("then DOCKER_CONTEXT, then config.json's currentContext, then the default socket", () => {
    expect(engineEndpoint({ HOME: home, DOCKER_CONTEXT: 'viassh' })).toEqual({ host: 'ssh://ci@build-host:2222', context: 'viassh' });
    expect(engineEndpoint({ HOME: home })).toEqual({ host: 'unix:///home/u/.colima/default/docker.sock', context: 'colima' });
    expect(engineAddress({ HOME: home })).toBe('unix:///home/u/.colima/default/docker.sock (docker context colima)');
    expect(engineEndpoint({ HOME: home, DOCKER_CONTEXT: 'default' })).toEqual({ host: 'unix:///var/run/docker.sock' });
    expect(engineEndpoint({ HOME: join(dir, 'nohome') })).toEqual({ host: 'unix:///var/run/docker.sock' });
    // DOCKER_CONFIG moves the whole store.
    expect(engineEndpoint({ HOME: join(dir, 'nohome'), DOCKER_CONFIG: cfg, DOCKER_CONTEXT: 'remote' })).toEqual({ host: 'tcp://10.0.0.5:2376', context: 'remote', tlsDir: join(cfg, 'contexts', 'tls', createHash('sha256').update('remote').digest('hex'), 'docker') });
  });

  it('a context that is named but not there is an error naming it and where it was named', () => {
    expect(() => engineEndpoint({ HOME: home, DOCKER_CONTEXT: 'gone' })).toThrow(/^docker context "gone" \(DOCKER_CONTEXT\) cannot be read: .*\/contexts\/meta\/[0-9a-f]{64}\/meta\.json: ENOENT/);
  });

  it("gives dockerode the context's endpoint (unix, tcp with its TLS files, ssh)", () => {
    expect(contextModemOptions(engineEndpoint({ HOME: home }))).toEqual({ socketPath: '/home/u/.colima/default/docker.sock' });
    const tcp = contextModemOptions(engineEndpoint({ HOME: home, DOCKER_CONTEXT: 'remote' }));
    expect(tcp).toMatchObject({ host: '10.0.0.5', port: '2376', protocol: 'https' });
    expect(String(tcp.ca)).toBe('ca.pem\n');
    expect(String(tcp.key)).toBe('key.pem\n');
    expect(contextModemOptions(engineEndpoint({ HOME: home, DOCKER_CONTEXT: 'viassh' }))).toEqual({ host: 'build-host', port: '2222', protocol: 'ssh', username: 'ci' });
  });
});

describe('killTaggedScript', () => {
  it('only takes a hex tag (it is put in a shell command)', () => {
    expect(killTaggedScript('0123abcd')).toContain("grep -qx 'GVISOR_E2E_EXEC=0123abcd'");
    expect(() => killTaggedScript("x'; rm -rf /; '")).toThrow(/bad exec tag/);
  });
});

// ---- the forwarder, run locally -----------------------------------------------------------------

function which(bin: string): string | undefined {
  try {
    return realpathSync(execFileSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' }).trim());
  } catch {
    return undefined;
  }
}
const perl = which('perl');
/** The interpreter itself, not a wrapper (a pyenv shim is a bash script that needs more than PATH=one dir). */
function realPython3(): string | undefined {
  try {
    return realpathSync(execFileSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).trim());
  } catch {
    return undefined;
  }
}
const python3 = realPython3();

/** A directory to be the forwarder's whole PATH, holding only these programs. */
function pathWith(name: string, programs: Record<string, string>): string {
  const p = join(dir, `path-${name}`);
  mkdirSync(p);
  for (const [n, target] of Object.entries(programs)) {
    if (target.startsWith('#!')) {
      writeFileSync(join(p, n), target);
      chmodSync(join(p, n), 0o755);
    } else symlinkSync(target, join(p, n));
  }
  return p;
}

interface Run {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs the node's forwarder argv as a local process with PATH=path (sh found by absolute path). */
function forward(path: string, socket: string, stdin: Buffer | undefined, o: { onStdout?: (b: Buffer) => void; useSocat?: boolean } = {}): Promise<Run> {
  const argv = forwarderArgv(socket);
  if (o.useSocat === false) argv[5] = '0';
  return new Promise((resolve) => {
    const child = spawn('/bin/sh', argv.slice(1), { env: { PATH: path }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      out.push(d);
      o.onStdout?.(d);
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr: err }));
    child.stdin.on('error', () => undefined);
    if (stdin) child.stdin.end(stdin);
  });
}

/** A unix echo server: every connection gets back what it sends, and is closed when the client half-closes. */
async function echoServer(name: string): Promise<{ path: string; server: Server }> {
  const path = join(dir, `${name}.sock`);
  const server = createServer({ allowHalfOpen: true }, (c) => c.pipe(c));
  await new Promise<void>((r) => server.listen(path, r));
  return { path, server };
}

describe('forwarder program choice (first of socat, perl, python3 the node has)', () => {
  const fakeSocat = '#!/bin/sh\necho "fake socat $*" >&2\n';
  const cases: [string, Record<string, string>, boolean, RegExp][] = [
    ['socat first', { socat: fakeSocat, ...(perl && { perl }), ...(python3 && { python3 }) }, true, /^fake socat -d -d -t 5 STDIO UNIX-CONNECT:\/nonexistent\/x\.sock$/m],
    ['socat skipped for a path it cannot parse', { socat: fakeSocat, ...(perl && { perl }) }, false, /cannot connect to unix socket \/nonexistent\/x\.sock: No such file or directory/],
  ];
  for (const [name, programs, useSocat, want] of cases) {
    it.skipIf(!perl)(name, async () => {
      const r = await forward(pathWith(name.replace(/\W+/g, '-'), programs), '/nonexistent/x.sock', Buffer.alloc(0), { useSocat });
      expect(r.stderr).toMatch(want);
    });
  }

  it('socat is used only for paths its address syntax can carry', () => {
    expect(forwarderArgv('/run/containerd/containerd.sock').at(-1)).toBe('1');
    for (const p of ['/run/a:b.sock', '/run/a,b.sock', '/run/a b.sock', "/run/a'b.sock", '/run/a!!b.sock']) expect(forwarderArgv(p).at(-1), p).toBe('0');
  });

  it.skipIf(!perl)('perl, when there is no socat', async () => {
    const r = await forward(pathWith('perl-only', { perl: perl! }), '/nonexistent/x.sock', Buffer.alloc(0));
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('cannot connect to unix socket /nonexistent/x.sock: No such file or directory\n');
  });

  it.skipIf(!python3)('python3, when there is neither socat nor perl', async () => {
    const r = await forward(pathWith('python-only', { python3: python3! }), '/nonexistent/x.sock', Buffer.alloc(0));
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('cannot connect to unix socket /nonexistent/x.sock: No such file or directory\n');
  });

  it('none of them: exit 127, naming all three', async () => {
    const r = await forward(pathWith('none', {}), '/run/containerd/containerd.sock', Buffer.alloc(0));
    expect(r.code).toBe(127);
    expect(r.stderr).toBe('cannot forward to unix socket /run/containerd/containerd.sock: the node has none of socat, perl (with IO::Socket::UNIX), python3\n');
  });

  it("recognises its readiness line and socat's", () => {
    expect(forwarderConnected(`${FORWARDER_READY}\n`)).toBe(true);
    expect(forwarderConnected('2026/12/02 20:00:00 socat[42] N starting data transfer loop with FDs [0,1] and [5,5]\n')).toBe(true);
    expect(forwarderConnected('2026/12/02 20:00:00 socat[42] N opening connection to AF=1 "/run/x.sock"\n')).toBe(false);
  });
});

describe('forwarder relaying, byte for byte', () => {
  const programs: [string, string | undefined][] = [
    ['perl', perl],
    ['python3', python3],
  ];
  for (const [name, bin] of programs) {
    it.skipIf(!bin)(`${name}: 1 MiB of random bytes come back identical, and stdin's EOF ends it once the server closes`, async () => {
      const { path, server } = await echoServer(`echo-${name}`);
      try {
        const data = randomBytes(1024 * 1024);
        const r = await forward(pathWith(`relay-${name}`, { [name]: bin! }), path, data);
        expect(r.stderr).toBe(`${FORWARDER_READY}\n`);
        expect(r.code).toBe(0);
        expect(r.stdout.length).toBe(data.length);
        expect(createHash('sha256').update(r.stdout).digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
        // That the server's close (not the drain time) ends it is the next test's: there stdin stays open.
      } finally {
        server.close();
      }
    });

    it.skipIf(!bin)(`${name}: the server closing ends it at once, with what the server sent`, async () => {
      const path = join(dir, `oneshot-${name}.sock`);
      const server = createServer((c) => c.end(Buffer.from([0, 1, 2, 3, 0xff])));
      await new Promise<void>((r) => server.listen(path, r));
      try {
        // stdin stays open: only the server's close can end it.
        const r = await forward(pathWith(`oneshot-${name}`, { [name]: bin! }), path, undefined);
        expect(r.code).toBe(0);
        expect([...r.stdout]).toEqual([0, 1, 2, 3, 0xff]);
      } finally {
        server.close();
      }
    });
  }

  it.skipIf(!perl && !python3)('a server that keeps its side open after our EOF is left after the drain time (5 s, like socat -t 5)', async () => {
    const path = join(dir, 'mute.sock');
    const server = createServer({ allowHalfOpen: true }, (c) => c.on('data', () => undefined));
    await new Promise<void>((r) => server.listen(path, r));
    try {
      // Both programs at once: the drain time is waited for once.
      await Promise.all(
        programs
          .filter(([, bin]) => bin)
          .map(async ([name, bin]) => {
            const t0 = Date.now();
            const r = await forward(pathWith(`mute-${name}`, { [name]: bin! }), path, Buffer.from('x'));
            expect(r.code, name).toBe(0);
            expect(Date.now() - t0, name).toBeGreaterThanOrEqual(4500);
          }),
      );
    } finally {
      server.close();
    }
  }, 15_000);
});

describe('an engine that misbehaves (a stand-in HTTP server on a unix socket)', () => {
  /** Serves the Docker API paths with `handler`, at a unix socket of its own; DOCKER_HOST points there during fn. */
  async function withEngine(name: string, handler: Parameters<typeof createHttpServer>[1], fn: () => Promise<void>): Promise<void> {
    const path = join(dir, `${name}-engine.sock`);
    const server = createHttpServer({}, handler);
    await new Promise<void>((r) => server.listen(path, r));
    const saved = process.env.DOCKER_HOST;
    process.env.DOCKER_HOST = `unix://${path}`;
    try {
      await fn();
    } finally {
      process.env.DOCKER_HOST = saved;
      server.closeAllConnections();
      server.close();
    }
  }

  it('one that never answers: the command times out naming the engine and the command', async () => {
    await withEngine('stalled', () => undefined, async () => {
      const e = await runInContainer(dockerClient(), 'n1', 'c1', ['true'], { timeoutMs: 300, what: 'command on n1: true' }).catch((x: Error) => x);
      expect((e as Error).message).toBe(`timed out after 0.3s waiting for the Docker engine at ${process.env.DOCKER_HOST} to start command on n1: true`);
    });
  });

  it('one without the container: named, with the engine\'s words', async () => {
    await withEngine(
      'nocontainer',
      (_req, res) => {
        res.writeHead(404, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ message: 'No such container: c1' }));
      },
      async () => {
        const e = await runInContainer(dockerClient(), 'n1', 'c1', ['true'], { timeoutMs: 5000, what: 'command on n1: true' }).catch((x: Error) => x);
        expect((e as Error).message).toBe(`[n1] container c1 not found in the Docker engine at ${process.env.DOCKER_HOST} (command on n1: true): No such container: c1`);
      },
    );
  });
});
