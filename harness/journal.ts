// The journal of changes the harness makes to a node's files, kept on the node, so they can be undone exactly.
import { createHash } from 'node:crypto';
import { InfrastructureError } from './errors.ts';
import { mustExec, readNodeFile, sh, writeNodeFile, type NodeAccess } from './node.ts';

/** The record's own fields; the installer's `installed.json` and the vm provider's `provisioned.json` have this shape. */
export interface JournalRecord {
  /** Files the harness created (removed on undo). */
  created: string[];
  /** Files the harness replaced, with the backup that restores them. */
  replaced: { path: string; backup: string }[];
  /** Directories the harness made (removed on undo when empty). */
  dirs?: string[];
  /**
   * sha256 of what the harness writes to each path, recorded before it writes: undo restores a
   * replaced file only while it still holds that (someone else's later edit is kept, and reported).
   */
  written?: Record<string, string>;
}

/** What undo left alone, and why: the caller reports it. */
export interface KeptFile {
  path: string;
  why: string;
}

// A binary installed on many nodes is one Buffer (installer.ts): hashed once, not once per node.
const hashed = new WeakMap<Buffer, string>();
const sha256 = (b: string | Buffer): string => {
  if (typeof b === 'string') return createHash('sha256').update(b).digest('hex');
  let h = hashed.get(b);
  if (h === undefined) hashed.set(b, (h = createHash('sha256').update(b).digest('hex')));
  return h;
};
const parent = (path: string) => path.slice(0, path.lastIndexOf('/')) || '/';

/**
 * Every change is written to the record on the node before it is made, so a crash in between
 * leaves a record that undo can act on; undo therefore tolerates recorded changes that never
 * happened (a created file that is absent, a backup that was never taken, a dir never made).
 * `X` is the caller's own fields, kept at the top level of the same record.
 */
export class NodeJournal<X extends object = Record<never, never>> {
  private constructor(
    private readonly node: NodeAccess,
    readonly stateFile: string,
    private readonly backupSuffix: string,
    private readonly record: JournalRecord & Partial<X>,
    /** A record was on the node already. */
    readonly existed: boolean,
  ) {}
  /** Files the last undo() left alone, with the reason (the caller reports them). */
  readonly kept: KeptFile[] = [];
  /** The record's directory exists, or its missing levels are recorded. */
  private stateDirKnown = false;

  /** Reads the node's record at stateFile, or starts an empty one (nothing is written until a change or save()). */
  static async open<X extends object = Record<never, never>>(node: NodeAccess, stateFile: string, backupSuffix: string): Promise<NodeJournal<X>> {
    const text = await readNodeFile(node, stateFile);
    let record: JournalRecord & Partial<X>;
    try {
      record = JSON.parse(text ?? '{}');
      if (typeof record !== 'object' || record === null || Array.isArray(record)) throw new Error('not an object');
    } catch {
      throw new InfrastructureError(`[${node.name}] ${stateFile} is corrupt; restore the node by hand and remove it`);
    }
    record.created ??= [];
    record.replaced ??= [];
    return new NodeJournal<X>(node, stateFile, backupSuffix, record, text !== undefined);
  }

  /** The caller's fields, saved with the record. */
  get extra(): Partial<X> {
    return this.record;
  }
  created(path: string): boolean {
    return this.record.created.includes(path);
  }
  /** The files it created below `dir`. */
  createdUnder(dir: string): string[] {
    return this.record.created.filter((c) => c.startsWith(`${dir.replace(/\/+$/, '')}/`));
  }
  backupOf(path: string): string | undefined {
    return this.record.replaced.find((r) => r.path === path)?.backup;
  }
  /** The journal created or replaced this file. */
  owns(path: string): boolean {
    return this.created(path) || this.backupOf(path) !== undefined;
  }

  /** Writes the record (recording the directories made for it, which are removed with it). */
  async save(): Promise<void> {
    if (!this.stateDirKnown) {
      this.recordDirs(await this.missingDirs(parent(this.stateFile)));
      this.stateDirKnown = true;
    }
    await writeNodeFile(this.node, this.stateFile, `${JSON.stringify(this.record, null, 2)}\n`, '0600');
  }

  /** Makes dir and its missing parents, recording each level made (removed on undo when empty). */
  async mkdirs(dir: string): Promise<void> {
    const missing = await this.missingDirs(dir);
    if (missing.length === 0) return;
    this.recordDirs(missing);
    await this.save();
    await mustExec(this.node, `mkdir -p ${sh(dir)}`);
  }

  /**
   * Writes a file unless it already has this content (by sha256): a new file is recorded as created,
   * an existing one not ours is backed up first. `once`: a file already ours is left alone (a later
   * step renders on top of it). Returns whether the file was written.
   */
  async put(path: string, content: string | Buffer, mode: string, opts: { once?: boolean } = {}): Promise<boolean> {
    if (opts.once && this.owns(path)) return false;
    const current = await this.hashOf(path);
    const want = sha256(content);
    if (current === want) return false;
    // writeNodeFile makes the missing parents; they are recorded first.
    this.recordDirs(await this.missingDirs(parent(path)));
    if (!this.owns(path)) {
      if (current === undefined) this.record.created.push(path);
      else this.record.replaced.push({ path, backup: `${path}${this.backupSuffix}` });
    }
    (this.record.written ??= {})[path] = want;
    await this.save();
    const backup = this.backupOf(path);
    // Taken only once: a backup missing here means a crash came after the record, before the copy,
    // so the file is still the original. Copy then rename, so a backup is never half a file.
    if (backup !== undefined && current !== undefined) {
      await mustExec(this.node, `[ -e ${sh(backup)} ] || { cp -p ${sh(path)} ${sh(`${backup}.tmp`)} && mv -f ${sh(`${backup}.tmp`)} ${sh(backup)}; }`);
    }
    await writeNodeFile(this.node, path, content, mode);
    return true;
  }

  /** Removes a file the journal created (nothing else); returns whether it did. The record is updated on the next save(). */
  async remove(path: string): Promise<boolean> {
    if (!this.created(path)) return false;
    // The file goes first: a crash before the record is saved leaves it listed, and undo tolerates that.
    await mustExec(this.node, `rm -f ${sh(path)}`);
    this.record.created = this.record.created.filter((c) => c !== path);
    return true;
  }

  /**
   * Restores every backup, removes every created file, runs `also` (the caller's own undo, while the
   * record still exists), then removes the record and the dirs made (deepest first, when empty).
   * Returns the paths undone, then what `also` returns.
   */
  async undo(also?: () => Promise<string[] | void>): Promise<string[]> {
    const undone: string[] = [];
    const written = this.record.written ?? {};
    // Records from before `written` existed have no hash: undone as they always were.
    const ours = (path: string, current: string | undefined) => current === undefined || written[path] === undefined || current === written[path];
    for (const r of this.record.replaced) {
      const current = await this.hashOf(r.path);
      const backup = await this.hashOf(r.backup);
      if (backup === undefined) {
        // A crash between the record and the copy: the file was never replaced.
      } else if (ours(r.path, current)) {
        await mustExec(this.node, `mv -f ${sh(r.backup)} ${sh(r.path)}`);
        undone.push(r.path);
      } else if (current === backup) {
        // A crash between the copy and the write: the file is still the original.
        await mustExec(this.node, `rm -f ${sh(r.backup)}`);
      } else {
        this.kept.push({ path: r.path, why: `changed since gvisor-e2e wrote it; left as it is, the original is kept at ${r.backup}` });
      }
    }
    for (const c of this.record.created) {
      const current = await this.hashOf(c);
      if (current === undefined) continue;
      // A file the harness created goes, edited since or not: the node had none before.
      if (!ours(c, current)) this.kept.push({ path: c, why: 'gvisor-e2e created it and it changed since; removed all the same (the node had no such file before)' });
      await mustExec(this.node, `rm -f ${sh(c)}`);
      undone.push(c);
    }
    undone.push(...((await also?.()) ?? []));
    await mustExec(this.node, `rm -f ${sh(this.stateFile)}`);
    for (const d of [...(this.record.dirs ?? [])].sort((a, b) => b.length - a.length)) await this.node.exec(`rmdir ${sh(d)} 2>/dev/null`);
    this.record.created = [];
    this.record.replaced = [];
    this.record.dirs = [];
    this.record.written = {};
    this.stateDirKnown = false;
    return undone;
  }

  /**
   * sha256 of a file, or undefined when there is no file. A file that is there but cannot be hashed
   * (sha256sum missing or failing) is an error: taken for absent, it would be overwritten without a
   * backup, and undo would delete the original.
   */
  private async hashOf(path: string): Promise<string | undefined> {
    const r = await this.node.exec(`if [ -e ${sh(path)} ] || [ -L ${sh(path)} ]; then sha256sum ${sh(path)}; else echo absent; fi`);
    const out = r.stdout.trim();
    if (r.code === 0 && out === 'absent') return undefined;
    const hash = out.split(/\s+/)[0] ?? '';
    if (r.code !== 0 || !/^[0-9a-f]{64}$/.test(hash)) {
      throw new InfrastructureError(`[${this.node.name}] cannot read ${path} to compare it (sha256sum exited ${r.code}: ${(r.stderr || out).trim().slice(0, 300) || 'no output'}); nothing was changed`);
    }
    return hash;
  }

  /** dir and each missing parent level, deepest first. */
  private async missingDirs(dir: string): Promise<string[]> {
    const out = await mustExec(this.node, `d=${sh(dir)}; while [ ! -d "$d" ]; do echo "$d"; d=$(dirname "$d"); done`);
    return out.split('\n').filter(Boolean);
  }

  private recordDirs(dirs: string[]): void {
    for (const d of dirs) if (!(this.record.dirs ??= []).includes(d)) this.record.dirs.push(d);
  }
}
