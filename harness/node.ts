import { shQuote } from './shell.ts';
import { spawn } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import type { Duplex } from 'node:stream';
import { Client, type ClientChannel, type ConnectConfig } from 'ssh2';
import type Dockerode from 'dockerode';
import type { NodeConfig } from './config.ts';
import { dockerClient, openContainerUnixSocket, runInContainer } from './docker.ts';
import { InfrastructureError, TimeoutError } from './errors.ts';
import { log } from './log.ts';
import { redact } from './redact.ts';
import { fixedDelays, retry, withAttempts } from './retry.ts';
import { until } from './wait.ts';

// A node is reached through one interface, whatever carries the commands: SSH for VMs and
// real hosts, plain child processes for the harness's own host, Docker API execs for kind nodes.

export interface ExecResult {
  stdout: string;
  stderr: string;
  code: number;
  durationMs: number;
}

export interface ExecOptions {
  timeoutMs?: number;
  stdin?: string | Buffer;
}

export interface TranscriptEntry {
  node: string;
  command: string;
  code: number | null;
  durationMs: number;
  stdout: string;
  stderr: string;
  error?: string;
}

export interface NodeAccess {
  readonly name: string;
  readonly config: NodeConfig;
  /** Runs a shell command (`sh -c`); non-zero exit codes are returned, not thrown. */
  exec(command: string, opts?: ExecOptions): Promise<ExecResult>;
  /** Opens a byte stream to a unix socket on the node (used to speak CRI to containerd). */
  openUnixSocket(path: string): Promise<Duplex>;
  /** Commands run so far, redacted, for the report. */
  readonly transcript: TranscriptEntry[];
  close(): Promise<void>;
}

const DEFAULT_TIMEOUT_MS = 60_000;
const MAX_TRANSCRIPT_OUTPUT = 4000;

function clip(s: string): string {
  return s.length > MAX_TRANSCRIPT_OUTPUT ? `${s.slice(0, MAX_TRANSCRIPT_OUTPUT)}… [${s.length - MAX_TRANSCRIPT_OUTPUT} more bytes]` : s;
}

abstract class BaseNode implements NodeAccess {
  readonly transcript: TranscriptEntry[] = [];
  constructor(readonly config: NodeConfig) {}
  get name(): string {
    return this.config.name;
  }
  protected abstract run(command: string, opts: Required<Pick<ExecOptions, 'timeoutMs'>> & ExecOptions): Promise<ExecResult>;
  abstract openUnixSocket(path: string): Promise<Duplex>;
  abstract close(): Promise<void>;

  async exec(command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const entry: TranscriptEntry = { node: this.name, command: redact(command), code: null, durationMs: 0, stdout: '', stderr: '' };
    const t0 = Date.now();
    try {
      const r = await this.run(command, { ...opts, timeoutMs });
      Object.assign(entry, { code: r.code, stdout: clip(redact(r.stdout)), stderr: clip(redact(r.stderr)) });
      log('debug', `[${this.name}] $ ${command} → ${r.code}`);
      return r;
    } catch (e) {
      entry.error = redact((e as Error).message);
      throw e;
    } finally {
      entry.durationMs = Date.now() - t0;
      this.transcript.push(entry);
    }
  }
}

/** Collects a child's output with a hard timeout that kills the whole process group. */
function runChild(argv: string[], what: string, opts: Required<Pick<ExecOptions, 'timeoutMs'>> & ExecOptions): Promise<ExecResult> {
  return new Promise((resolvePromise, reject) => {
    const t0 = Date.now();
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* already gone */
      }
      reject(new TimeoutError(what, opts.timeoutMs));
    }, opts.timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new InfrastructureError(`${what}: cannot start ${argv[0]}: ${e.message}`, { cause: e }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        code: code ?? (signal ? 128 + 9 : 1),
        durationMs: Date.now() - t0,
      });
    });
    child.stdin.on('error', () => {
      /* the command may exit before reading stdin */
    });
    child.stdin.end(opts.stdin ?? '');
  });
}

/** The harness's own host. */
export class LocalNode extends BaseNode {
  protected run(command: string, opts: Required<Pick<ExecOptions, 'timeoutMs'>> & ExecOptions): Promise<ExecResult> {
    return runChild(['/bin/sh', '-c', command], `command on ${this.name}: ${redact(command).slice(0, 120)}`, opts);
  }
  openUnixSocket(path: string): Promise<Duplex> {
    return new Promise((res, rej) => {
      const s = netConnect(path);
      s.once('connect', () => res(s));
      s.once('error', (e) => rej(new InfrastructureError(`[${this.name}] cannot connect to ${path}: ${e.message}`)));
    });
  }
  async close(): Promise<void> {}
}

/**
 * A kind node (or any container) reached through the Docker Engine API (harness/docker.ts), in the
 * engine DOCKER_HOST names, as the docker CLI and kind find it: commands are execs, and a unix
 * socket is reached through a forwarder process in an exec (no socat needed in the node).
 */
export class DockerExecNode extends BaseNode {
  private docker?: Dockerode;
  private get container(): string {
    return (this.config.access as Extract<NodeConfig['access'], { type: 'docker' }>).container;
  }
  /** The engine is read from the environment at first use, like the docker CLI at each start. */
  private client(): Dockerode {
    return (this.docker ??= dockerClient());
  }
  protected async run(command: string, opts: Required<Pick<ExecOptions, 'timeoutMs'>> & ExecOptions): Promise<ExecResult> {
    const t0 = Date.now();
    const what = `command on ${this.name}: ${redact(command).slice(0, 120)}`;
    const r = await runInContainer(this.client(), this.name, this.container, ['sh', '-c', command], { stdin: opts.stdin, timeoutMs: opts.timeoutMs, what });
    return { stdout: r.stdout.toString('utf8'), stderr: r.stderr.toString('utf8'), code: r.code, durationMs: Date.now() - t0 };
  }
  openUnixSocket(path: string): Promise<Duplex> {
    return openContainerUnixSocket(this.client(), this.name, this.container, path);
  }
  async close(): Promise<void> {}
}

// ---- SSH -------------------------------------------------------------------------------------

/** OpenSSH fingerprint of a raw public key blob: "SHA256:" + unpadded base64 of its sha256. */
export function fingerprint(keyBlob: Buffer): string {
  return `SHA256:${createHash('sha256').update(keyBlob).digest('base64').replace(/=+$/, '')}`;
}

/** Host patterns as known_hosts writes them: "host" for port 22, "[host]:port" otherwise. */
function hostPattern(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

/** Keys known_hosts lists for this host (plain and hashed "|1|salt|hash" entries). */
export function knownHostKeys(knownHosts: string, host: string, port: number): Buffer[] {
  const want = hostPattern(host, port);
  const keys: Buffer[] = [];
  const revoked: Buffer[] = [];
  for (const raw of knownHosts.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    // A CA key vouches for host certificates only; it is never the host's own key.
    if (line.startsWith('@cert-authority')) continue;
    const isRevoked = line.startsWith('@revoked');
    const parts = line.replace(/^@revoked\s+/, '').split(/\s+/);
    if (parts.length < 3) continue;
    const [hosts, , b64] = parts as [string, string, string];
    if (isRevoked) {
      // sshd(8): a revoked key must never be accepted, whatever else lists it.
      revoked.push(Buffer.from(b64, 'base64'));
      continue;
    }
    const match = hosts.split(',').some((h) => {
      if (h.startsWith('|1|')) {
        const [, , salt, hash] = h.split('|');
        if (!salt || !hash) return false;
        return createHmac('sha1', Buffer.from(salt, 'base64')).update(want).digest('base64') === hash;
      }
      return h === want;
    });
    if (match) keys.push(Buffer.from(b64, 'base64'));
  }
  return keys.filter((k) => !revoked.some((r) => r.equals(k)));
}

export class SshNode extends BaseNode {
  private client?: Client;
  private connecting?: Promise<Client>;
  private unreachable?: Error;
  /** The host key the server presented, for error messages. */
  private seenFingerprint?: string;

  private get access() {
    return this.config.access as Extract<NodeConfig['access'], { type: 'ssh' }>;
  }

  /**
   * Connects once and reuses the connection. Transient network errors (refused while sshd
   * restarts, reset) are retried with backoff; a host key or auth problem is final at once.
   */
  private async connectClient(timeoutMs: number): Promise<Client> {
    // Once a node has been declared unreachable, every later check fails at once with that reason.
    if (this.unreachable) throw this.unreachable;
    const codeOf = (e: unknown) => ((e as InfrastructureError).cause as NodeJS.ErrnoException | undefined)?.code;
    return retry(() => this.connectOnce(timeoutMs), {
      what: `[${this.name}] SSH connect`,
      backoff: fixedDelays([250, 500, 1000, 2000]),
      retryable: (e) => ['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'EHOSTUNREACH'].includes(codeOf(e) ?? ''),
      logLevel: 'debug',
      giveUp: (e, attempts) => (this.unreachable = withAttempts(e, attempts) as Error),
    });
  }

  private connectOnce(timeoutMs: number): Promise<Client> {
    if (this.client) return Promise.resolve(this.client);
    if (this.connecting) return this.connecting;
    const a = this.access;
    const where = `${a.user}@${a.host}:${a.port}`;
    this.connecting = new Promise<Client>((res, rej) => {
      let privateKey: Buffer;
      try {
        privateKey = readFileSync(a.privateKeyPath);
      } catch (e) {
        rej(new InfrastructureError(`[${this.name}] cannot read SSH private key ${a.privateKeyPath}: ${(e as NodeJS.ErrnoException).code}`));
        return;
      }
      const allowed = a.hostKeyFingerprint
        ? null
        : knownHostKeys(readFileSync(a.knownHostsPath!, 'utf8'), a.host, a.port);
      let hostKeyRejected = false;
      const c = new Client();
      const cfg: ConnectConfig = {
        host: a.host,
        port: a.port,
        username: a.user,
        privateKey,
        readyTimeout: timeoutMs,
        keepaliveInterval: 10_000,
        hostVerifier: (key: Buffer) => {
          this.seenFingerprint = fingerprint(key);
          const ok = a.hostKeyFingerprint ? this.seenFingerprint === a.hostKeyFingerprint : allowed!.some((k) => k.equals(key));
          hostKeyRejected = !ok;
          return ok;
        },
      };
      c.on('ready', () => {
        this.client = c;
        res(c);
      });
      c.on('error', (e) => {
        this.connecting = undefined;
        if (hostKeyRejected) {
          rej(
            new InfrastructureError(
              `[${this.name}] SSH host key of ${a.host}:${a.port} is not trusted: it presented ${this.seenFingerprint}, ` +
                (a.hostKeyFingerprint ? `expected ${a.hostKeyFingerprint}` : `which is not in ${a.knownHostsPath}`),
            ),
          );
        } else {
          rej(new InfrastructureError(`[${this.name}] SSH connection to ${where} failed: ${e.message}`, { cause: e }));
        }
      });
      c.on('close', () => {
        this.client = undefined;
        this.connecting = undefined;
      });
      try {
        c.connect(cfg);
      } catch (e) {
        this.connecting = undefined;
        rej(new InfrastructureError(`[${this.name}] cannot use SSH private key ${a.privateKeyPath}: ${(e as Error).message}`));
      }
    });
    return this.connecting;
  }

  protected async run(command: string, opts: Required<Pick<ExecOptions, 'timeoutMs'>> & ExecOptions): Promise<ExecResult> {
    const t0 = Date.now();
    const client = await this.connectClient(opts.timeoutMs);
    return new Promise((res, rej) => {
      client.exec(command, (err, stream: ClientChannel) => {
        if (err) {
          rej(new InfrastructureError(`[${this.name}] SSH exec failed: ${err.message}`, { cause: err }));
          return;
        }
        const out: Buffer[] = [];
        const errb: Buffer[] = [];
        let code: number | null = null;
        const timer = setTimeout(() => {
          stream.signal('KILL');
          stream.close();
          rej(new TimeoutError(`command on ${this.name}: ${redact(command).slice(0, 120)}`, opts.timeoutMs));
        }, opts.timeoutMs);
        stream.on('data', (d: Buffer) => out.push(d));
        stream.stderr.on('data', (d: Buffer) => errb.push(d));
        stream.on('exit', (c: number | null, signal?: string) => {
          code = c ?? (signal ? 137 : 1);
        });
        stream.on('close', () => {
          clearTimeout(timer);
          // sshd always sends exit-status or exit-signal: a channel closed without either means the
          // connection died under the command (sshd stopped, host gone), not that the command failed.
          if (code === null) {
            rej(new InfrastructureError(`[${this.name}] SSH connection lost while running \`${redact(command).slice(0, 120)}\` (no exit status)`));
            return;
          }
          res({ stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(errb).toString('utf8'), code, durationMs: Date.now() - t0 });
        });
        stream.end(opts.stdin ?? '');
      });
    });
  }

  async openUnixSocket(path: string): Promise<Duplex> {
    const client = await this.connectClient(DEFAULT_TIMEOUT_MS);
    return new Promise((res, rej) => {
      client.openssh_forwardOutStreamLocal(path, (err, stream) => {
        if (err) rej(new InfrastructureError(`[${this.name}] cannot forward unix socket ${path} over SSH: ${err.message}`));
        else res(stream);
      });
    });
  }

  async close(): Promise<void> {
    this.client?.end();
    this.client = undefined;
  }
}

/** A check needed the node's own filesystem or processes, and the node is reachable only through the Kubernetes API. */
export class NoNodeAccess extends Error {
  override readonly name = 'NoNodeAccess';
}

/**
 * A node of an existing cluster with no SSH access: pods still reach it through the API (the
 * suites' oneShot), but nothing runs on the node itself. A check that needs the node fails with
 * NoNodeAccess, which the suites report as skipped with this reason.
 */
class ApiOnlyNode extends BaseNode {
  private refuse(): never {
    throw new NoNodeAccess(`needs the node's own filesystem, and ${this.name} has no SSH access (add it to cluster.nodes to check this)`);
  }
  protected async run(): Promise<ExecResult> {
    this.refuse();
  }
  async openUnixSocket(): Promise<Duplex> {
    this.refuse();
  }
  async close(): Promise<void> {}
}

export function openNode(cfg: NodeConfig): NodeAccess {
  switch (cfg.access.type) {
    case 'api':
      return new ApiOnlyNode(cfg);
    case 'ssh':
      return new SshNode(cfg);
    case 'local':
      return new LocalNode(cfg);
    case 'docker':
      return new DockerExecNode(cfg);
  }
}

/** The banner line ("SSH-2.0-…") an sshd on 127.0.0.1:port sends, or undefined when none comes within timeoutMs. */
export function sshBanner(port: number, timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const sock = netConnect({ host: '127.0.0.1', port });
    let buf = '';
    const done = (v: string | undefined) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      const i = buf.indexOf('SSH-2.0');
      if (i >= 0 && buf.indexOf('\n', i) >= 0) done(buf.slice(i, buf.indexOf('\n', i)).trim());
    });
    sock.on('error', () => done(undefined));
    sock.on('close', () => done(undefined));
  });
}

/**
 * Waits for the sshd of a machine the harness just started (a test node, a VM) to answer on
 * 127.0.0.1:port; returns its banner. `gone()` says why waiting is pointless (the process that
 * serves it exited): that message is thrown at once. `onAttempt` sees the time waited so far.
 */
export async function waitForSshd(
  what: string,
  port: number,
  timeoutMs: number,
  o: { gone: () => string | undefined; intervalMs?: number; onAttempt?: (waitedMs: number) => void },
): Promise<string> {
  const t0 = Date.now();
  let banner: string | undefined;
  await until(
    `sshd of ${what} on 127.0.0.1:${port}`,
    timeoutMs,
    async () => {
      const why = o.gone();
      if (why) throw new InfrastructureError(why);
      o.onAttempt?.(Date.now() - t0);
      banner = await sshBanner(port, Math.max(100, Math.min(2000, t0 + timeoutMs - Date.now())));
      return banner !== undefined;
    },
    o.intervalMs ?? 150,
  );
  return banner!;
}

/** Quotes a string for a POSIX shell (harness/shell.ts; the short name many callers use). */
export const sh = shQuote;

/** Helpers every suite and the installer need on top of exec. */
export async function readNodeFile(node: NodeAccess, path: string): Promise<string | undefined> {
  const r = await node.exec(`cat ${sh(path)}`);
  return r.code === 0 ? r.stdout : undefined;
}

export async function writeNodeFile(node: NodeAccess, path: string, content: string | Buffer, mode = '0644'): Promise<void> {
  // Write to a temp file and rename, so a reader (containerd, systemd) never sees half a file.
  // A name of its own: two writers of one path (two runs on a node) must not share a temp file.
  const tmp = `${path}.gvisor-e2e.${randomBytes(6).toString('hex')}.tmp`;
  // The size is checked before the rename: if the harness dies mid-transfer, cat sees the end of
  // its input early and exits 0, and half a file must not land (the fault matrix caught that).
  const size = typeof content === 'string' ? Buffer.byteLength(content) : content.length;
  const r = await node.exec(`mkdir -p "$(dirname ${sh(path)})" && { cat > ${sh(tmp)} && [ "$(wc -c < ${sh(tmp)})" -eq ${size} ] && chmod ${mode} ${sh(tmp)} && mv -f ${sh(tmp)} ${sh(path)} || { rm -f ${sh(tmp)}; exit 1; }; }`, {
    stdin: content,
    timeoutMs: 120_000,
  });
  if (r.code !== 0) {
    await node.exec(`rm -f ${sh(tmp)}`).catch(() => undefined);
    throw new InfrastructureError(`[${node.name}] cannot write ${path}: ${r.stderr.trim()}`);
  }
}

/**
 * Removes a tree the harness (or software it ran) made on a node: every mount at or below it is
 * unmounted lazily first (pod volumes, network namespaces), and rm never crosses into a mount.
 */
export async function removeTreeOnNode(node: NodeAccess, dir: string): Promise<void> {
  if (!/^\/[^\s]+$/.test(dir) || dir.split('/').filter(Boolean).length < 2) throw new InfrastructureError(`[${node.name}] refusing to remove ${dir}: not a path at least two levels deep`);
  const re = dir.replace(/[.[\]()*+?^$|\\]/g, '\\$&');
  await mustExec(node, `for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E ${sh(`^${re}(/|$)`)} | sort -r); do umount -l "$m"; done; rm -rf --one-file-system ${sh(dir)}`, { timeoutMs: 120_000 });
}

/** Which of `paths` do not exist on the node (recorded before software the harness runs may make them). */
export async function absentOnNode(node: NodeAccess, paths: string[]): Promise<string[]> {
  const r = await mustExec(node, paths.map((p) => `[ -e ${sh(p)} ] || echo ${sh(p)}`).join('; ') + '; true');
  return r.split('\n').filter(Boolean);
}

export async function mustExec(node: NodeAccess, command: string, opts?: ExecOptions): Promise<string> {
  const r = await node.exec(command, opts);
  if (r.code !== 0) throw new InfrastructureError(`[${node.name}] \`${redact(command).slice(0, 160)}\` exited ${r.code}: ${redact(r.stderr.trim() || r.stdout.trim()).slice(0, 500)}`);
  return r.stdout;
}
