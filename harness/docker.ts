// Nodes that are containers (kind): commands and unix-socket streams over the Docker Engine API.
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import Dockerode from 'dockerode';
import { InfrastructureError, TimeoutError } from './errors.ts';

// The client is dockerode, the Docker API client testcontainers is built on. testcontainers' own
// entry point (getContainerRuntimeClient) is not used: when the engine DOCKER_HOST names does not
// answer, it silently falls back to /var/run/docker.sock and the rootless sockets (another engine
// than the one kind made the nodes in); TESTCONTAINERS_HOST and ~/.testcontainers.properties
// override DOCKER_HOST; inside a container it may run an alpine container to find a gateway; and it
// caches the first engine for the whole process. Here the engine is the one the docker CLI (and so
// kind) uses: DOCKER_HOST (read by docker-modem, with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH) or the
// current docker context; and nothing is started in it (no Ryuk reaper: that comes only with
// testcontainers' GenericContainer/Network, unused here).

/** Where the docker CLI would find the engine: DOCKER_HOST, else the current context's endpoint, else the default socket. */
export interface EngineEndpoint {
  host: string;
  /** The context it came from (not for DOCKER_HOST or the default). */
  context?: string;
  /** A context's TLS files (ca.pem, cert.pem, key.pem), when it has them. */
  tlsDir?: string;
}

const DEFAULT_ENGINE = 'unix:///var/run/docker.sock';

/**
 * The engine endpoint as the docker CLI resolves it (kind drives that CLI, so its nodes are there):
 * DOCKER_HOST wins; else the context DOCKER_CONTEXT or config.json's currentContext names, read from
 * the CLI's context store ($DOCKER_CONFIG or ~/.docker, contexts/meta/<sha256 of the name>/meta.json);
 * else the default socket. A context that is named but missing is an error, as it is for the CLI.
 */
export function engineEndpoint(env: NodeJS.ProcessEnv = process.env): EngineEndpoint {
  if (env.DOCKER_HOST) return { host: env.DOCKER_HOST };
  const configDir = env.DOCKER_CONFIG || join(env.HOME || homedir(), '.docker');
  let name = env.DOCKER_CONTEXT;
  if (!name) {
    try {
      name = (JSON.parse(readFileSync(join(configDir, 'config.json'), 'utf8')) as { currentContext?: string }).currentContext;
    } catch {
      /* no config.json (or an unreadable one, which the CLI would report itself): the default */
    }
  }
  if (!name || name === 'default') return { host: DEFAULT_ENGINE };
  const id = createHash('sha256').update(name).digest('hex');
  const meta = join(configDir, 'contexts', 'meta', id, 'meta.json');
  let host: string | undefined;
  try {
    host = (JSON.parse(readFileSync(meta, 'utf8')) as { Endpoints?: { docker?: { Host?: string } } }).Endpoints?.docker?.Host;
  } catch (e) {
    throw new InfrastructureError(`docker context "${name}" (${env.DOCKER_CONTEXT ? 'DOCKER_CONTEXT' : `currentContext in ${join(configDir, 'config.json')}`}) cannot be read: ${meta}: ${(e as Error).message}`);
  }
  if (!host) throw new InfrastructureError(`docker context "${name}" has no docker endpoint (Endpoints.docker.Host in ${meta})`);
  const tlsDir = join(configDir, 'contexts', 'tls', id, 'docker');
  return { host, context: name, ...(existsSync(join(tlsDir, 'ca.pem')) && { tlsDir }) };
}

/** The engine the docker CLI would talk to, for messages. */
export function engineAddress(env: NodeJS.ProcessEnv = process.env): string {
  const e = engineEndpoint(env);
  return e.context ? `${e.host} (docker context ${e.context})` : e.host;
}

/** dockerode's options for an endpoint found in a context (DOCKER_HOST and the default are docker-modem's own job). */
export function contextModemOptions(e: EngineEndpoint): Dockerode.DockerOptions {
  const u = new URL(e.host);
  const tls = e.tlsDir && {
    ca: readFileSync(join(e.tlsDir, 'ca.pem')),
    ...(existsSync(join(e.tlsDir, 'cert.pem')) && { cert: readFileSync(join(e.tlsDir, 'cert.pem')), key: readFileSync(join(e.tlsDir, 'key.pem')) }),
  };
  switch (u.protocol) {
    case 'unix:':
      return { socketPath: u.pathname };
    case 'tcp:':
      return { host: u.hostname, port: u.port || (tls ? 2376 : 2375), protocol: tls ? 'https' : 'http', ...tls };
    case 'ssh:':
      return { host: u.hostname, port: u.port || 22, protocol: 'ssh', username: u.username || undefined };
    default:
      throw new InfrastructureError(`docker context "${e.context}": endpoint ${e.host} is not unix://, tcp:// or ssh://`);
  }
}

/** A Docker API client for the engine the docker CLI would use, resolved now. */
export function dockerClient(): Dockerode {
  const e = engineEndpoint();
  // docker-modem reads DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH itself, as the CLI does.
  return e.context ? new Dockerode(contextModemOptions(e)) : new Dockerode();
}

/** Turns an engine error (unreachable, no such container, container stopped) into one that names the node. */
export function engineError(node: string, container: string, what: string, e: unknown): InfrastructureError {
  const err = e as NodeJS.ErrnoException & { statusCode?: number; json?: { message?: string } };
  const detail = err.json?.message ?? err.message;
  if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED' || err.code === 'EACCES') {
    return new InfrastructureError(`[${node}] cannot reach the Docker engine at ${engineAddress()} (${err.code}) to ${what}: is dockerd running, and is DOCKER_HOST right?`, { cause: e });
  }
  if (err.statusCode === 404) return new InfrastructureError(`[${node}] container ${container} not found in the Docker engine at ${engineAddress()} (${what}): ${detail}`, { cause: e });
  if (err.statusCode === 409) return new InfrastructureError(`[${node}] container ${container} is not running (${what}): ${detail}`, { cause: e });
  return new InfrastructureError(`[${node}] Docker engine error on container ${container} (${what}): ${detail}`, { cause: e });
}

// ---- the multiplexed stream of a non-TTY exec ----------------------------------------------

/**
 * Splits Docker's multiplexed attach stream (a non-TTY exec's stdout and stderr on one connection:
 * frames of an 8-byte header — stream type 1 or 2, three zero bytes, a big-endian uint32 length —
 * and that many bytes) into its two streams, incrementally: payload is handed on as it arrives,
 * without waiting for a whole frame or copying buffers (a 60 MB binary passes through).
 * docker-modem's demuxStream does the same split, but writes with no backpressure and never ends
 * its outputs, and guesses a TTY stream on a bad header; here a bad header is an error.
 */
export class DockerStreamDemuxer {
  private header = Buffer.alloc(8);
  private headerFill = 0;
  private remaining = 0;
  private stream: 1 | 2 = 1;

  constructor(private readonly sink: (stream: 'stdout' | 'stderr', data: Buffer) => void) {}

  /** Feeds the next bytes of the connection. Throws on a frame that is not stdout or stderr. */
  write(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      if (this.remaining === 0) {
        const n = Math.min(8 - this.headerFill, chunk.length - off);
        chunk.copy(this.header, this.headerFill, off, off + n);
        this.headerFill += n;
        off += n;
        if (this.headerFill < 8) return;
        this.headerFill = 0;
        const type = this.header[0]!;
        if ((type !== 1 && type !== 2) || this.header[1] !== 0 || this.header[2] !== 0 || this.header[3] !== 0) {
          throw new InfrastructureError(`Docker exec stream is not multiplexed as expected: frame header ${this.header.toString('hex')}`);
        }
        this.stream = type;
        this.remaining = this.header.readUInt32BE(4);
        continue;
      }
      const n = Math.min(this.remaining, chunk.length - off);
      this.sink(this.stream === 1 ? 'stdout' : 'stderr', chunk.subarray(off, off + n));
      this.remaining -= n;
      off += n;
    }
  }

  /** The connection ended: undefined if it ended between frames, else what was cut short. */
  truncated(): string | undefined {
    if (this.headerFill > 0) return `${this.headerFill} bytes of a frame header`;
    if (this.remaining > 0) return `a frame with ${this.remaining} bytes still to come`;
    return undefined;
  }
}

// ---- running a command ---------------------------------------------------------------------

/** Every exec carries this variable with a value of its own, so its processes can be found (and ended) by identity. */
export const EXEC_TAG_VAR = 'GVISOR_E2E_EXEC';

export function newExecTag(): string {
  return randomBytes(8).toString('hex');
}

/** A shell command that SIGKILLs every process in the container whose environment carries this exec tag. */
export function killTaggedScript(tag: string): string {
  if (!/^[0-9a-f]+$/.test(tag)) throw new Error(`bad exec tag ${tag}`);
  // /proc/<pid>/environ is NUL-separated; tr keeps this to POSIX tools (busybox included).
  return `for p in /proc/[0-9]*; do tr '\\0' '\\n' < "$p/environ" 2>/dev/null | grep -qx '${EXEC_TAG_VAR}=${tag}' && kill -KILL "\${p#/proc/}" 2>/dev/null; done; true`;
}

export interface ContainerExec {
  /** The hijacked connection: write stdin to it (end() closes the process's stdin). */
  socket: Duplex;
  exec: Dockerode.Exec;
  tag: string;
  node: string;
  container: string;
}

/**
 * Starts argv in the container with stdin, stdout and stderr attached (no TTY) on one hijacked
 * connection. An engine that does not answer within timeoutMs is a timeout naming `what`; should
 * the exec start after that, its processes are ended by tag.
 */
export async function startExec(docker: Dockerode, node: string, container: string, argv: string[], what: string, timeoutMs: number): Promise<ContainerExec> {
  const tag = newExecTag();
  let late = false;
  const start = (async () => {
    const exec = await docker.getContainer(container).exec({
      Cmd: argv,
      AttachStdin: true,
      AttachStdout: true,
      AttachStderr: true,
      Tty: false,
      Env: [`${EXEC_TAG_VAR}=${tag}`],
    });
    const socket = await exec.start({ hijack: true, stdin: true });
    if (late) {
      socket.destroy();
      void killExec(docker, container, tag);
    }
    return { socket, exec, tag, node, container };
  })();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      late = true;
      reject(new TimeoutError(`the Docker engine at ${engineAddress()} to start ${what}`, timeoutMs));
    }, timeoutMs);
  });
  try {
    return await Promise.race([start, timeout]);
  } catch (e) {
    if (e instanceof TimeoutError) throw e;
    throw engineError(node, container, what, e);
  } finally {
    clearTimeout(timer);
    start.catch(() => undefined);
  }
}

/** The exit code of an exec whose stream has ended (dockerd may record it a moment after the stream closes). */
export async function execExitCode(x: ContainerExec, what: string, timeoutMs = 10_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 5; ; delay = Math.min(delay * 2, 200)) {
    const st = await x.exec.inspect().catch((e: unknown) => {
      throw engineError(x.node, x.container, `the exit code of ${what}`, e);
    });
    if (!st.Running && st.ExitCode !== null && st.ExitCode !== undefined) return st.ExitCode;
    if (Date.now() > deadline) throw new TimeoutError(`the exit code of ${what}`, timeoutMs);
    await new Promise((r) => setTimeout(r, delay));
  }
}

/** Ends the processes of an exec (and their children, which inherit its tag). Best effort: the container may be gone. */
export async function killExec(docker: Dockerode, container: string, tag: string): Promise<void> {
  try {
    const killer = await docker.getContainer(container).exec({ Cmd: ['sh', '-c', killTaggedScript(tag)], AttachStdout: false, AttachStderr: false });
    await killer.start({ Detach: true });
  } catch {
    /* the container is gone, and its processes with it */
  }
}

export interface RunResult {
  stdout: Buffer;
  stderr: Buffer;
  code: number;
}

/**
 * Runs argv in the container, feeds it stdin, and collects stdout and stderr apart. The Docker API
 * cannot kill an exec, so on timeout its processes are found by their tag and SIGKILLed.
 */
export async function runInContainer(
  docker: Dockerode,
  node: string,
  container: string,
  argv: string[],
  o: { stdin?: string | Buffer; timeoutMs: number; what: string },
): Promise<RunResult> {
  const deadline = Date.now() + o.timeoutMs;
  const x = await startExec(docker, node, container, argv, o.what, o.timeoutMs);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const demux = new DockerStreamDemuxer((s, d) => (s === 'stdout' ? out : err).push(Buffer.from(d)));
  await new Promise<void>((resolve, reject) => {
    let done = false;
    const finish = (e?: Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (e) reject(e);
      else resolve();
    };
    const timer = setTimeout(() => {
      x.socket.destroy();
      void killExec(docker, container, x.tag);
      finish(new TimeoutError(o.what, o.timeoutMs));
    }, Math.max(0, deadline - Date.now()));
    x.socket.on('data', (d: Buffer) => {
      try {
        demux.write(d);
      } catch (e) {
        x.socket.destroy();
        void killExec(docker, container, x.tag);
        finish(e as Error);
      }
    });
    let ended = false;
    let writeFailed = false;
    x.socket.on('end', () => {
      ended = true;
      const cut = demux.truncated();
      finish(cut ? new InfrastructureError(`[${node}] the Docker engine closed the stream of ${o.what} in ${cut}`) : undefined);
    });
    // The command may exit before it reads all of stdin (EPIPE on our side): that is its business,
    // and its exit code says what happened; any other connection failure is the engine's.
    x.socket.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE' || e.code === 'ECONNRESET') writeFailed = true;
      else finish(new InfrastructureError(`[${node}] Docker engine connection failed while running ${o.what}: ${e.message}`, { cause: e }));
    });
    x.socket.on('close', () => {
      if (!ended && !writeFailed) finish(new InfrastructureError(`[${node}] the connection to the Docker engine closed while running ${o.what}`));
      else finish();
    });
    x.socket.end(o.stdin ?? '');
  });
  const code = await execExitCode(x, o.what, Math.max(1000, deadline - Date.now()));
  return { stdout: Buffer.concat(out), stderr: Buffer.concat(err), code };
}

// ---- a unix socket in the container --------------------------------------------------------

/** What the forwarder writes to stderr once it is connected (socat says "starting data transfer loop"). */
export const FORWARDER_READY = 'gvisor-e2e-forward: connected';
/** Seconds a forwarder keeps relaying the other way after one side reached EOF, before it exits. */
const DRAIN_S = 5;

// Each program connects to the socket named by its first argument, says FORWARDER_READY on stderr,
// then relays stdin→socket and socket→stdout byte for byte (binary-safe: raw fds, no encoding, no
// buffering). The socket's EOF ends it at once; stdin's EOF half-closes the socket, and the answer
// still in flight is relayed for up to DRAIN_S seconds (socat's -t, the same way).
const PERL_FORWARDER = `
use strict; use IO::Socket::UNIX; use IO::Select; use Socket;
my $p = shift;
my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $p) or do { print STDERR "cannot connect to unix socket $p: $!\\n"; exit 2 };
syswrite STDERR, "${FORWARDER_READY}\\n";
my $sel = IO::Select->new(\\*STDIN, $s); my $t;
while (my @r = $sel->can_read($t)) {
  for my $h (@r) {
    my $n = sysread($h, my $buf, 65536);
    die "read: $!\\n" unless defined $n;
    if ($h == $s) {
      exit 0 if $n == 0;
      for (my $o = 0; $o < $n;) { my $w = syswrite(STDOUT, $buf, $n - $o, $o); die "write: $!\\n" unless defined $w; $o += $w }
    } elsif ($n == 0) {
      shutdown($s, 1); $sel->remove(\\*STDIN); $t = ${DRAIN_S};
    } else {
      for (my $o = 0; $o < $n;) { my $w = syswrite($s, $buf, $n - $o, $o); die "write: $!\\n" unless defined $w; $o += $w }
    }
  }
}
`;

const PYTHON_FORWARDER = `
import os, select, socket, sys
p = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(p)
except OSError as e:
    sys.stderr.write("cannot connect to unix socket %s: %s\\n" % (p, e.strerror)); sys.exit(2)
os.write(2, b"${FORWARDER_READY}\\n")
fds = [0, s]; t = None
while True:
    r = select.select(fds, [], [], t)[0]
    if not r: sys.exit(0)
    for f in r:
        if f is s:
            b = s.recv(65536)
            if not b: sys.exit(0)
            while b: b = b[os.write(1, b):]
        else:
            b = os.read(0, 65536)
            if not b:
                s.shutdown(socket.SHUT_WR); fds.remove(0); t = ${DRAIN_S}
            else:
                s.sendall(b)
`;

/**
 * The shell script (run as `sh -c SCRIPT gvisor-e2e-forward PATH USE_SOCAT`) that forwards to the
 * unix socket PATH with the first of socat, perl (IO::Socket::UNIX: perl-base is Essential on
 * Debian, so kindest/node has it), python3 the node has; with none it exits 127 naming all three.
 * socat is skipped when USE_SOCAT is not 1: its address syntax cannot carry every path.
 */
export function forwarderScript(): string {
  return [
    'p=$1',
    `if [ "$2" = 1 ] && command -v socat >/dev/null 2>&1; then exec socat -d -d -t ${DRAIN_S} STDIO "UNIX-CONNECT:$p"; fi`,
    `if command -v perl >/dev/null 2>&1 && perl -MIO::Socket::UNIX -e 1 2>/dev/null; then exec perl -e '${PERL_FORWARDER.replace(/'/g, `'\\''`)}' "$p"; fi`,
    `if command -v python3 >/dev/null 2>&1; then exec python3 -c '${PYTHON_FORWARDER.replace(/'/g, `'\\''`)}' "$p"; fi`,
    'echo "cannot forward to unix socket $p: the node has none of socat, perl (with IO::Socket::UNIX), python3" >&2',
    'exit 127',
  ].join('\n');
}

/** The argv that runs the forwarder in the node. */
export function forwarderArgv(path: string): string[] {
  // socat splits addresses at ':' and ',' and interprets '!!' and quotes; plain paths only.
  const socatSafe = /^[\w./-]+$/.test(path);
  return ['sh', '-c', forwarderScript(), 'gvisor-e2e-forward', path, socatSafe ? '1' : '0'];
}

/** Whether a forwarder's stderr says it is connected (ours, or socat -d -d's notice). */
export function forwarderConnected(stderr: string): boolean {
  return stderr.includes(FORWARDER_READY) || /\bN starting data transfer loop\b/.test(stderr);
}

/**
 * A byte stream to a unix socket inside the container: a forwarder process (see forwarderScript)
 * runs in an exec whose stdin and stdout carry the bytes. Resolves once the forwarder is connected;
 * rejects with its own words when it cannot connect. end() half-closes (the forwarder sees EOF on
 * stdin and exits once the answer is relayed); destroy() drops the connection, which closes the
 * exec's stdin too; the socket's side closing ends the forwarder and so the stream.
 */
export async function openContainerUnixSocket(docker: Dockerode, node: string, container: string, path: string, timeoutMs = 30_000): Promise<Duplex & { execTag: string }> {
  const what = `a forwarder to unix socket ${path}`;
  const deadline = Date.now() + timeoutMs;
  const x = await startExec(docker, node, container, forwarderArgv(path), what, timeoutMs);
  const sock = x.socket;
  let stderr = '';
  let ready = false;
  let onReady: ((e?: Error) => void) | undefined;
  const stream = new Duplex({
    // Like a net.Socket: once the node's side has ended, ours is ended too.
    allowHalfOpen: false,
    write(chunk: Buffer, _enc, cb) {
      sock.write(chunk, cb);
    },
    final(cb) {
      sock.end(cb);
    },
    read() {
      sock.resume();
    },
    destroy(err, cb) {
      sock.destroy();
      cb(err);
    },
  }) as Duplex & { execTag: string };
  stream.execTag = x.tag;
  const demux = new DockerStreamDemuxer((s, d) => {
    if (s === 'stdout') {
      if (!stream.push(Buffer.from(d))) sock.pause();
      return;
    }
    // Only the tail of the forwarder's stderr matters (its last words).
    stderr = (stderr + d.toString('utf8')).slice(-4000);
    if (!ready && forwarderConnected(stderr)) {
      ready = true;
      onReady?.();
    }
  });
  const failure = async (): Promise<Error> => {
    const code = await execExitCode(x, what, 5_000).catch(() => undefined);
    // socat -d -d's notices are noise here; its errors (" E ") and the others' messages are the reason.
    const words = stderr.split('\n').filter((l) => l && !/socat\[\d+\] [DIN] /.test(l) && !l.includes(FORWARDER_READY)).join('; ').trim();
    return new InfrastructureError(`[${node}] cannot connect to unix socket ${path} in container ${container}: ${words || `forwarder exited ${code ?? '(exit code unknown)'}`}`);
  };
  sock.on('data', (d: Buffer) => {
    try {
      demux.write(d);
    } catch (e) {
      stream.destroy(e as Error);
    }
  });
  sock.on('end', () => {
    if (!ready) void failure().then((e) => onReady?.(e));
    else stream.push(null);
  });
  sock.on('error', (e) => {
    if (!ready) onReady?.(new InfrastructureError(`[${node}] Docker engine connection failed while opening ${what}: ${e.message}`, { cause: e }));
    else stream.destroy(e);
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      onReady = undefined;
      sock.destroy();
      void killExec(docker, container, x.tag);
      reject(new TimeoutError(`${what} in ${node} to connect`, timeoutMs));
    }, Math.max(0, deadline - Date.now()));
    onReady = (e) => {
      clearTimeout(timer);
      onReady = undefined;
      if (e) {
        sock.destroy();
        reject(e);
      } else resolve();
    };
    if (ready) onReady();
  });
  return stream;
}
