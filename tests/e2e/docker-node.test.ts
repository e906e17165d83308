// DockerExecNode against a real Docker engine (a private dockerd) and a real containerd 2 in a
// container: execs, the CRI through the unix-socket forwarder, byte-exact streams, cleanup.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureNspawnRootfs } from '../../clusters/local/nspawn-node.ts';
import { buildContainerd, cacheRoot } from '../../harness/binaries.ts';
import { nodeConfig } from '../../harness/config.ts';
import { CriClient } from '../../harness/cri.ts';
import { killTaggedScript } from '../../harness/docker.ts';
import { InfrastructureError, TimeoutError } from '../../harness/errors.ts';
import { mustExec, openNode, readNodeFile, writeNodeFile, type NodeAccess } from '../../harness/node.ts';
import { until } from '../../harness/wait.ts';
import { dockerdAvailable, groupEmpty, startPrivateDockerd, type PrivateDockerd } from './dockerd.ts';

// The node is the cached Debian rootfs (`docker import`) running the cached containerd 2 as its main
// process, not a kind node image booting systemd: what is under test is the Docker API path (exec,
// streams, the forwarder) and a real containerd answering the CRI through it; systemd would add
// ~10 s of boot and nothing to that. The rootfs has perl (Essential) and neither socat nor python3,
// so the forwarder runs the way it must on a kind node without socat; socat is then put in (its
// .deb, through writeNodeFile) to check that path too.

const IMAGE = 'gvisor-e2e.local/docker-node:test';
const CONTAINER = 'gve2e-dockernode';
const SOCK = '/run/containerd/containerd.sock';
const ECHO = '/tmp/echo.sock';
const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-dockernode-'));
let d: PrivateDockerd;
let node: NodeAccess;

const docker = (args: string[]) => execFileSync('docker', ['-H', d.host, ...args], { encoding: 'utf8', timeout: 300_000, maxBuffer: 64 * 1024 * 1024 });
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Pids of processes in the node that carry this exec tag (the forwarder and anything it started). */
async function tagged(tag: string): Promise<string[]> {
  const out = await mustExec(node, `for p in /proc/[0-9]*; do tr '\\0' '\\n' < "$p/environ" 2>/dev/null | grep -qx 'GVISOR_E2E_EXEC=${tag}' && echo "\${p#/proc/} $(cat $p/comm)"; done; true`);
  return out.split('\n').filter(Boolean);
}

/** Processes in the node whose command line names this socket (containerd's own does not). */
async function forwardersTo(path: string): Promise<string[]> {
  const out = await mustExec(node, `for p in /proc/[0-9]*; do [ "$p" = /proc/$$ ] || ! tr '\\0' '\\n' < "$p/cmdline" 2>/dev/null | grep -qx '${path}' || echo "\${p#/proc/}"; done; true`);
  return out.split('\n').filter(Boolean);
}

function readAll(s: Duplex, n: number, what: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    let len = 0;
    const timer = setTimeout(() => reject(new Error(`timed out reading ${n} bytes of ${what} (got ${len})`)), 60_000);
    s.on('data', (b: Buffer) => {
      got.push(b);
      len += b.length;
      if (len >= n) {
        clearTimeout(timer);
        resolve(Buffer.concat(got));
      }
    });
    s.on('error', reject);
  });
}

beforeAll(async () => {
  const missing = dockerdAvailable();
  if (missing) throw new Error(`this test needs Debian's dockerd (.ci/setup installs docker.io): ${missing}`);
  const [rootfsTar, containerd] = await Promise.all([ensureNspawnRootfs({ cacheDir: join(cacheRoot(), 'rootfs') }), buildContainerd()]);
  d = await startPrivateDockerd();
  // The harness finds the engine as the docker CLI (and kind) do.
  process.env.DOCKER_HOST = d.host;
  docker(['import', rootfsTar, IMAGE]);
  // containerd 2 with its CRI; layers on a tmpfs (overlay on the container's own overlay root is refused).
  writeFileSync(join(dir, 'config.toml'), "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'native'\n");
  docker([
    'run', '-d', '--name', CONTAINER, '--privileged', '--init', '--tmpfs', '/var/lib/containerd', '--tmpfs', '/run',
    '-v', `${containerd.containerd}:/usr/local/bin/containerd:ro`, '-v', `${dir}/config.toml:/etc/containerd/config.toml:ro`,
    IMAGE, '/usr/local/bin/containerd', '--config', '/etc/containerd/config.toml',
  ]);
  node = openNode(nodeConfig({ name: 'docker-node', pool: 'plain', access: { type: 'docker', container: CONTAINER } }));
  await until(`containerd's socket ${SOCK} in ${CONTAINER}`, 30_000, async () => (await node.exec(`[ -S ${SOCK} ]`)).code === 0, 200);
  // A unix echo server (binary-safe: raw sysread/syswrite), one connection at a time.
  await mustExec(
    node,
    `perl -MIO::Socket::UNIX -e '$l = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => "${ECHO}", Listen => 5) or die $!; ` +
      `while ($c = $l->accept) { while (($n = sysread($c, $b, 65536)) > 0) { for ($o = 0; $o < $n;) { $o += syswrite($c, $b, $n - $o, $o) } } close $c }' </dev/null >/dev/null 2>&1 &`,
  );
  await until(`the echo server's socket ${ECHO}`, 10_000, async () => (await node.exec(`[ -S ${ECHO} ]`)).code === 0, 100);
}, 600_000);

afterAll(async () => {
  delete process.env.DOCKER_HOST;
  rmSync(dir, { recursive: true, force: true });
  if (!d) return;
  spawnSync('docker', ['-H', d.host, 'rm', '-f', CONTAINER], { stdio: 'ignore' });
  spawnSync('docker', ['-H', d.host, 'rmi', IMAGE], { stdio: 'ignore' });
  const containers = spawnSync('docker', ['-H', d.host, 'ps', '-aq'], { encoding: 'utf8' }).stdout.trim();
  const images = spawnSync('docker', ['-H', d.host, 'images', '-q'], { encoding: 'utf8' }).stdout.trim();
  const pgid = Number(spawnSync('sh', ['-c', `ps -o pgid= -p $(cat ${d.dir}/docker.pid)`], { encoding: 'utf8' }).stdout.trim());
  await d.stop();
  expect(containers, 'containers left in the private engine').toBe('');
  expect(images, 'images left in the private engine').toBe('');
  expect(existsSync(d.dir), 'private dockerd dir').toBe(false);
  if (pgid) expect(groupEmpty(pgid), 'private dockerd processes').toBe(true);
  // No CRI tunnel dir of this process is left behind.
  expect(readdirSync(tmpdir()).filter((e) => e.startsWith(`gvisor-e2e-cri-${process.pid}-`))).toEqual([]);
});

describe('commands through the Docker API', () => {
  it('returns exit code, stdout and stderr apart, and feeds stdin byte for byte', async () => {
    const r = await node.exec('echo out; echo err >&2; exit 3');
    expect(r).toMatchObject({ code: 3, stdout: 'out\n', stderr: 'err\n' });
    const input = randomBytes(3 * 1024 * 1024);
    const s = await node.exec('wc -c; sha256sum', { stdin: input });
    // wc reads all of stdin; sha256sum then sees EOF: the hash of nothing proves stdin was closed.
    expect(s.stdout).toBe(`${input.length}\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  -\n`);
    expect((await node.exec('sha256sum', { stdin: input })).stdout).toBe(`${sha(input)}  -\n`);
    // A command that never reads its stdin still gets its exit code.
    expect((await node.exec('exit 7', { stdin: randomBytes(8 * 1024 * 1024) })).code).toBe(7);
  });

  it('a timeout names the command and ends its processes in the node', async () => {
    const t0 = Date.now();
    const e = await node.exec('sleep 41.5; echo never', { timeoutMs: 1500 }).catch((x: Error) => x);
    expect(e).toBeInstanceOf(TimeoutError);
    expect((e as Error).message).toBe('timed out after 1.5s waiting for command on docker-node: sleep 41.5; echo never');
    expect(Date.now() - t0).toBeLessThan(5000);
    // ([s]: the checking shell's own command line holds the pattern, not the match.)
    await until('the timed-out sleep to be gone from the node', 5000, async () => (await node.exec(`grep -l '[s]leep.41.5' /proc/[0-9]*/cmdline 2>/dev/null; true`)).stdout.trim() === '', 200);
  });

  it('the transcript is redacted', async () => {
    await node.exec('echo password=hunter2');
    const last = node.transcript.at(-1)!;
    expect(last.command).not.toContain('hunter2');
    expect(last.stdout).not.toContain('hunter2');
    expect(last).toMatchObject({ node: 'docker-node', code: 0 });
  });

  it('a missing container or engine is named plainly', async () => {
    const gone = openNode(nodeConfig({ name: 'gone', pool: 'plain', access: { type: 'docker', container: 'gve2e-no-such' } }));
    const e = await gone.exec('true').catch((x: Error) => x);
    expect(e).toBeInstanceOf(InfrastructureError);
    expect((e as Error).message).toMatch(/^\[gone\] container gve2e-no-such not found in the Docker engine at unix:\/\/.*docker\.sock \(command on gone: true\): No such container: gve2e-no-such$/);
    const saved = process.env.DOCKER_HOST;
    process.env.DOCKER_HOST = `unix://${dir}/no-such-docker.sock`;
    try {
      const off = openNode(nodeConfig({ name: 'off', pool: 'plain', access: { type: 'docker', container: CONTAINER } }));
      const e2 = await off.exec('true').catch((x: Error) => x);
      expect((e2 as Error).message).toBe(`[off] cannot reach the Docker engine at unix://${dir}/no-such-docker.sock (ENOENT) to command on off: true: is dockerd running, and is DOCKER_HOST right?`);
    } finally {
      process.env.DOCKER_HOST = saved;
    }
  });

  it('without DOCKER_HOST, the current docker context names the engine (as for the docker CLI and kind)', async () => {
    const saved = { ...process.env };
    const cfg = join(dir, 'docker-config');
    const id = createHash('sha256').update('gve2e-private').digest('hex');
    mkdirSync(join(cfg, 'contexts', 'meta', id), { recursive: true });
    writeFileSync(join(cfg, 'contexts', 'meta', id, 'meta.json'), JSON.stringify({ Name: 'gve2e-private', Metadata: {}, Endpoints: { docker: { Host: d.host, SkipTLSVerify: false } } }));
    writeFileSync(join(cfg, 'config.json'), JSON.stringify({ currentContext: 'gve2e-private' }));
    try {
      delete process.env.DOCKER_HOST;
      process.env.DOCKER_CONFIG = cfg;
      const viaContext = openNode(nodeConfig({ name: 'ctx', pool: 'plain', access: { type: 'docker', container: CONTAINER } }));
      expect((await viaContext.exec('echo via context')).stdout).toBe('via context\n');
      // The CLI agrees on the engine.
      expect(execFileSync('docker', ['ps', '--format', '{{.Names}}'], { encoding: 'utf8', env: { ...process.env } }).trim()).toBe(CONTAINER);
    } finally {
      process.env.DOCKER_HOST = saved.DOCKER_HOST;
      delete process.env.DOCKER_CONFIG;
    }
  });

  it('writeNodeFile and readNodeFile carry a 60 MB binary (a runsc-sized file) intact', async () => {
    const big = randomBytes(60 * 1024 * 1024);
    const t0 = Date.now();
    await writeNodeFile(node, '/opt/big/runsc', big, '0755');
    const ms = Date.now() - t0;
    console.log(`writeNodeFile of 60 MB through the Docker API: ${ms} ms`);
    expect((await mustExec(node, 'sha256sum /opt/big/runsc; stat -c %a /opt/big/runsc; ls /opt/big')).split('\n')).toEqual([`${sha(big)}  /opt/big/runsc`, '755', 'runsc', '']);
    await writeNodeFile(node, '/opt/big/text', 'héllo\n');
    expect(await readNodeFile(node, '/opt/big/text')).toBe('héllo\n');
  });
});

describe('unix sockets in the node through the forwarder (no socat: perl)', () => {
  it("containerd's CRI answers Version and Status through CriClient", async () => {
    const cri = await CriClient.connect(node, SOCK);
    try {
      const v = await cri.version();
      expect(v.runtime_name).toBe('containerd');
      expect(v.runtime_version).toMatch(/^v2\./);
      const st = await cri.status();
      expect(st.conditions.find((c) => c.type === 'RuntimeReady')?.status).toBe(true);
      expect(JSON.parse(st.info.config!)).toHaveProperty('containerd');
    } finally {
      cri.close();
    }
    // The tunnel's connections close with the client, and their forwarders with them.
    await until('no forwarder to containerd.sock left after CriClient.close()', 10_000, async () => (await forwardersTo(SOCK)).length === 0, 200);
  });

  it('1 MiB of random bytes round-trips identical; end() leaves no forwarder in the node', async () => {
    const s = (await node.openUnixSocket(ECHO)) as Duplex & { execTag: string };
    const procs = await tagged(s.execTag);
    expect(procs.map((p) => p.split(' ')[1])).toEqual(['perl']);
    const data = randomBytes(1024 * 1024);
    const back = readAll(s, data.length, 'the echo');
    s.write(data);
    expect(sha(await back)).toBe(sha(data));
    const closed = new Promise((r) => s.on('close', r));
    s.end();
    await closed;
    await until('the forwarder to exit after end()', 10_000, async () => (await tagged(s.execTag)).length === 0, 200);
  });

  it('destroy() (what the CRI tunnel does) leaves no forwarder either', async () => {
    const s = (await node.openUnixSocket(ECHO)) as Duplex & { execTag: string };
    s.write('ping');
    expect((await readAll(s, 4, 'ping')).toString()).toBe('ping');
    expect(await tagged(s.execTag)).toHaveLength(1);
    s.destroy();
    await until('the forwarder to exit after destroy()', 10_000, async () => (await tagged(s.execTag)).length === 0, 200);
  });

  it('a socket that does not exist is an error naming it and the cause', async () => {
    const e = await node.openUnixSocket('/run/no-such.sock').catch((x: Error) => x);
    expect(e).toBeInstanceOf(InfrastructureError);
    expect((e as Error).message).toBe('[docker-node] cannot connect to unix socket /run/no-such.sock in container gve2e-dockernode: cannot connect to unix socket /run/no-such.sock: No such file or directory');
  });

  it('a CRI socket that is not there makes the CRI call fail naming the forwarder\'s reason', async () => {
    const cri = await CriClient.connect(node, '/run/no-such.sock', 10_000);
    try {
      const e = await cri.version().catch((x: Error) => x);
      expect(e).toBeInstanceOf(InfrastructureError);
      expect((e as Error).message).toBe(
        'CRI Version on docker-node: containerd at /run/no-such.sock is unavailable: [docker-node] cannot connect to unix socket /run/no-such.sock in container gve2e-dockernode: cannot connect to unix socket /run/no-such.sock: No such file or directory',
      );
    } finally {
      cri.close();
    }
  });

  it('the node closing its side ends the stream', async () => {
    const s = (await node.openUnixSocket(ECHO)) as Duplex & { execTag: string };
    const ended = new Promise((r) => s.on('end', r));
    s.resume();
    await mustExec(node, killTaggedScript(s.execTag));
    await ended;
    expect(await tagged(s.execTag)).toEqual([]);
  });
});

describe('with socat in the node', () => {
  beforeAll(async () => {
    // bookworm's socat; its libraries (libc6, libssl3, libwrap0) are in the rootfs.
    execFileSync('apt-get', ['download', 'socat'], { cwd: dir, stdio: 'ignore', timeout: 120_000 });
    const deb = readdirSync(dir).find((f) => f.startsWith('socat_'))!;
    await writeNodeFile(node, `/tmp/${deb}`, readFileSync(join(dir, deb)));
    await mustExec(node, `dpkg -i /tmp/${deb} && rm /tmp/${deb}`, { timeoutMs: 120_000 });
  }, 300_000);

  it('socat forwards, byte for byte, and leaves nothing behind', async () => {
    const s = (await node.openUnixSocket(ECHO)) as Duplex & { execTag: string };
    expect((await tagged(s.execTag)).map((p) => p.split(' ')[1])).toEqual(['socat']);
    const data = randomBytes(1024 * 1024);
    const back = readAll(s, data.length, 'the echo');
    s.write(data);
    expect(sha(await back)).toBe(sha(data));
    s.end();
    await until('socat to exit after end()', 10_000, async () => (await tagged(s.execTag)).length === 0, 200);
    const cri = await CriClient.connect(node, SOCK);
    try {
      expect((await cri.version()).runtime_name).toBe('containerd');
    } finally {
      cri.close();
    }
  });

  it("socat's own words when the socket does not exist", async () => {
    const e = await node.openUnixSocket('/run/no-such.sock').catch((x: Error) => x);
    expect((e as Error).message).toMatch(/^\[docker-node\] cannot connect to unix socket \/run\/no-such\.sock in container gve2e-dockernode: .*socat\[\d+\] E connect\(.*"\/run\/no-such\.sock".*\): No such file or directory$/);
  });
});

describe('the engine', () => {
  it('holds only the container the test made (no reaper, no helper container)', () => {
    expect(docker(['ps', '-a', '--format', '{{.Names}}']).trim().split('\n')).toEqual([CONTAINER]);
  });
});
