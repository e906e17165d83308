// The harness's own record of a cluster on this machine: <stateDir>/state.json, written atomically,
// marked with the provider that owns it, and a lock so that a second run on the same cluster waits
// (and says who holds it) instead of racing the first.
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmdirSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { homedir, hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { ConfigError, InfrastructureError } from './errors.ts';
import { log } from './log.ts';

/** ~/.local/state/gvisor-e2e/<name>: outside /var and /run, which host nodes remount privately. */
export function defaultStateDir(name: string): string {
  const root = process.env.GVISOR_E2E_STATE ?? join(process.env.XDG_STATE_HOME ?? join(homedir(), '.local', 'state'), 'gvisor-e2e');
  return join(root, name);
}

/** The ownership marker every state file carries. */
export interface StateOwner {
  provider: string;
  cluster: string;
  /**
   * Whether the harness made the directory itself (false: it was there, empty, and was adopted).
   * `remove()` takes a directory it made, and only the contents of one it adopted.
   */
  madeDir?: boolean;
}

const RECORD = 'state.json';

/**
 * Refuses a state directory that exists, holds something and has no gvisor-e2e record: the
 * harness did not make it (`stateDir: .` would be the config's own folder), so it neither fills
 * nor removes it. `source`/`field` name where it was configured (exit 64).
 */
export function checkStateDir(dir: string, source: string, field = 'cluster.stateDir'): void {
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    if (code === 'ENOTDIR') throw new ConfigError(source, [{ path: field, message: `${dir} is not a directory` }]);
    throw e;
  }
  if (entries.length === 0 || entries.includes(RECORD)) return;
  throw new ConfigError(source, [
    {
      path: field,
      message: `${dir} exists and holds files but no gvisor-e2e record (${RECORD}): gvisor-e2e did not make it and will neither use nor remove it; point ${field} at a new or empty directory`,
    },
  ]);
}

/** Recognises the provider's own state files written before the marker existed. */
export type LegacyOwn = (s: Record<string, unknown>) => boolean;

/** Writes a file so that a reader sees the old or the new content, never half of it. */
export function writeFileAtomic(path: string, content: string, mode = 0o600): void {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, content, { mode });
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

export class StateFile<T extends object> {
  readonly file: string;
  /** This process made the directory (and may take it back even before a record is in it). */
  private madeHere = false;
  constructor(
    readonly dir: string,
    private readonly owner: StateOwner,
    private readonly legacyOwn: LegacyOwn = () => false,
  ) {
    this.file = join(dir, RECORD);
  }

  exists(): boolean {
    return existsSync(this.file);
  }

  /** The record, or undefined when there is none. A record of another provider is refused, not overwritten. */
  read(): T | undefined {
    if (!existsSync(this.file)) return undefined;
    const s = JSON.parse(readFileSync(this.file, 'utf8')) as T & { owner?: StateOwner; cluster?: unknown };
    const ours = s.owner ? s.owner.provider === this.owner.provider : this.legacyOwn(s as Record<string, unknown>);
    // Several providers keep their state under the same <name> by default: never mistake one for another.
    if (!ours) {
      const whose = s.owner ? `"${s.owner.cluster}" (${s.owner.provider})` : `"${String(s.cluster ?? '?')}"`;
      throw new InfrastructureError(`${this.file} belongs to another provider's cluster ${whose}: run \`down\` with that config first, or pick another cluster.name or stateDir`);
    }
    return s;
  }

  write(s: T): void {
    let madeDir: boolean | undefined;
    if (existsSync(this.file)) {
      madeDir = this.recordedOwner()?.madeDir;
    } else {
      // The first record: a directory with someone else's files is refused, an empty one adopted.
      checkStateDir(this.dir, this.dir, 'stateDir');
      madeDir = !existsSync(this.dir);
      if (madeDir) {
        mkdirSync(this.dir, { recursive: true, mode: 0o700 });
        this.madeHere = true;
      }
    }
    const owner: StateOwner = madeDir === undefined ? this.owner : { ...this.owner, madeDir };
    writeFileAtomic(this.file, JSON.stringify({ owner, ...s }, null, 2));
  }

  private recordedOwner(): StateOwner | undefined {
    try {
      return (JSON.parse(readFileSync(this.file, 'utf8')) as { owner?: StateOwner }).owner;
    } catch {
      return undefined;
    }
  }

  /** Writes the record (and so the owner marker) before anything else goes into the directory. */
  claim(initial: T): void {
    if (this.read() === undefined) this.write(initial);
  }

  /**
   * Removes the state directory, and everything in it, only while it holds this provider's record
   * (a directory it adopted empty keeps existing, emptied). A directory without a record is left
   * as it is, unless this process made it a moment ago. Another provider's record is refused
   * (read() says whose it is).
   */
  remove(): void {
    if (!existsSync(this.dir)) return;
    let ours: boolean;
    try {
      ours = this.read() !== undefined;
    } catch (e) {
      // A record cut short (written before writes were atomic) is still ours by its name and place.
      if (!(e instanceof SyntaxError)) throw e;
      ours = true;
    }
    if (ours) {
      if (this.recordedOwner()?.madeDir === false) {
        for (const e of readdirSync(this.dir)) if (e !== RECORD) rmSync(join(this.dir, e), { recursive: true, force: true });
        // The record goes last: until then, a `down` cut short can be repeated.
        rmSync(this.file, { force: true });
      } else {
        rmSync(this.dir, { recursive: true, force: true });
      }
      this.madeHere = false;
      return;
    }
    if (this.madeHere) {
      try {
        rmdirSync(this.dir);
        this.madeHere = false;
        return;
      } catch {
        /* not empty: left, with the warning below */
      }
    }
    if (readdirSync(this.dir).length) log('warn', `${this.dir} holds no gvisor-e2e record (${this.file}): left as it is`);
  }

  /** Refuses (exit 64) to act on a directory that holds files but no record (see checkStateDir). */
  checkOwnership(): void {
    checkStateDir(this.dir, this.dir, 'stateDir');
  }
}

interface Holder {
  pid: number;
  /** /proc/<pid>/stat start time: a recycled pid is not the holder. */
  start: string;
  host: string;
  command: string;
  since: string;
}

export function processStartTime(pid: number): string | undefined {
  try {
    // Field 22 (starttime), counted after the parenthesised command name, which may contain spaces.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** In this process, a lock is re-entrant: `run` takes it and calls `up`, which takes it again. */
const held = new Map<string, number>();

/**
 * Holds <dir>.lock while fn runs. Another live holder (checked by pid and start time, never by
 * name) is waited for up to `waitMs`, with its pid and command in the log and in the error.
 */
export async function withClusterLock<R>(dir: string, command: string, fn: () => Promise<R>, waitMs = 600_000): Promise<R> {
  const lock = `${dir}.lock`;
  const depth = held.get(lock) ?? 0;
  if (depth === 0) await acquire(lock, command, waitMs);
  held.set(lock, depth + 1);
  try {
    return await fn();
  } finally {
    const d = (held.get(lock) ?? 1) - 1;
    if (d === 0) {
      held.delete(lock);
      releaseLock(lock);
    } else held.set(lock, d);
  }
}

/** Gives the lock up early (a signal handler that hands `down` to a child process). */
export function releaseClusterLock(dir: string): void {
  const lock = `${dir}.lock`;
  if (held.delete(lock)) releaseLock(lock);
}

function releaseLock(lock: string): void {
  const h = readHolder(lock);
  if (h && h.pid === process.pid) rmSync(lock, { force: true });
}

function readHolder(lock: string): Holder | undefined {
  try {
    return JSON.parse(readFileSync(lock, 'utf8')) as Holder;
  } catch {
    return undefined;
  }
}

async function acquire(lock: string, command: string, waitMs: number): Promise<void> {
  mkdirSync(dirname(lock), { recursive: true, mode: 0o700 });
  const me: Holder = { pid: process.pid, start: processStartTime(process.pid) ?? '', host: hostname(), command, since: new Date().toISOString() };
  const deadline = Date.now() + waitMs;
  let said = false;
  let lookedAgain = false;
  for (;;) {
    let fd: number | undefined;
    try {
      fd = openSync(lock, 'wx', 0o600);
      writeSync(fd, JSON.stringify(me));
      closeSync(fd);
      return;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST') {
        // Our own half-made lock goes again; the error names the state directory (a full disk is its problem).
        if (fd !== undefined) {
          try {
            closeSync(fd);
          } catch {
            /* already closed */
          }
          rmSync(lock, { force: true });
        }
        const dir = lock.slice(0, -'.lock'.length);
        throw new InfrastructureError(
          code === 'ENOSPC' ? `no space left in the state directory ${dir} (ENOSPC): cannot write its lock ${lock}` : `cannot take the lock ${lock} of the state directory ${dir}: ${(e as Error).message}`,
          { cause: e },
        );
      }
    }
    const h = readHolder(lock);
    // A holder on another host (a shared home directory) cannot be checked from here: it counts as alive.
    const alive = h !== undefined && (h.host !== me.host || processStartTime(h.pid) === h.start);
    if (!alive) {
      // A holder that died (or a lock file cut short): its lock is stale.
      if (h === undefined && existsSync(lock) && !lookedAgain) {
        // A holder may be between creating and writing the file: look again once before taking it.
        lookedAgain = true;
        await new Promise((r) => setTimeout(r, 200));
        continue;
      }
      rmSync(lock, { force: true });
      continue;
    }
    const who = `pid ${h.pid} (\`gvisor-e2e ${h.command}\`, since ${h.since})`;
    if (Date.now() > deadline) throw new InfrastructureError(`the cluster state ${dirname(lock)} is in use by ${who}; gave up after ${waitMs / 1000}s (${lock})`);
    if (!said) log('warn', `the cluster is in use by ${who}: waiting up to ${waitMs / 1000}s for it to finish`);
    said = true;
    await new Promise((r) => setTimeout(r, 500));
  }
}
