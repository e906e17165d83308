// The journal of node changes, run against a temp directory through a real local node.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { nodeConfig } from '../../harness/config.ts';
import { NodeJournal } from '../../harness/journal.ts';
import { LocalNode, type ExecOptions, type NodeAccess } from '../../harness/node.ts';

const top = mkdtempSync(join(tmpdir(), 'gvisor-e2e-unit-journal-'));
afterAll(() => rmSync(top, { recursive: true, force: true }));

const local = new LocalNode(nodeConfig({ name: 'local-1', pool: 'p', access: { type: 'local' } }));

/** The local node, except that the harness "dies" at the first command matching `crashOn` (it throws, nothing after runs). */
function crashingNode(crashOn: RegExp): NodeAccess {
  return {
    name: local.name,
    config: local.config,
    transcript: local.transcript,
    exec: (command: string, opts?: ExecOptions) => (crashOn.test(command) ? Promise.reject(new Error(`killed before: ${command}`)) : local.exec(command, opts)),
    openUnixSocket: (p) => local.openUnixSocket(p),
    close: () => local.close(),
  };
}

let root: string;
let stateFile: string;
const SUFFIX = '.gvisor-e2e.orig';
beforeEach(() => {
  root = mkdtempSync(join(top, 'node-'));
  stateFile = join(root, 'var/lib/gvisor-e2e/installed.json');
});
const record = () => JSON.parse(readFileSync(stateFile, 'utf8'));
/** Every path under root, to compare the tree before and after. */
const tree = (d = root): string[] => readdirSync(d, { withFileTypes: true }).flatMap((e) => [join(d, e.name), ...(e.isDirectory() ? tree(join(d, e.name)) : [])]).sort();

describe('NodeJournal', () => {
  it('creates a file in missing dirs, records them, and undo leaves the tree as it was', async () => {
    const before = tree();
    const j = await NodeJournal.open(local, stateFile, SUFFIX);
    expect(j.existed).toBe(false);
    const f = join(root, 'etc/a/b/new.conf');
    expect(await j.put(f, 'hello\n', '0640')).toBe(true);
    expect(readFileSync(f, 'utf8')).toBe('hello\n');
    expect(statSync(f).mode & 0o777).toBe(0o640);
    const r = record();
    expect(r.created).toEqual([f]);
    expect(r.replaced).toEqual([]);
    expect(r.dirs).toEqual(expect.arrayContaining([join(root, 'etc'), join(root, 'etc/a'), join(root, 'etc/a/b'), join(root, 'var/lib/gvisor-e2e')]));

    const again = await NodeJournal.open(local, stateFile, SUFFIX);
    expect(again.existed).toBe(true);
    expect(await again.undo()).toEqual([f]);
    expect(tree()).toEqual(before);
  });

  it('backs up a replaced file once and restores it byte for byte, with its mode', async () => {
    const f = join(root, 'etc/containerd/config.toml');
    mkdirSync(join(root, 'etc/containerd'), { recursive: true });
    const original = randomBytes(70_000);
    writeFileSync(f, original);
    chmodSync(f, 0o604);
    const before = tree();

    const j = await NodeJournal.open(local, stateFile, SUFFIX);
    expect(await j.put(f, 'first\n', '0644')).toBe(true);
    expect(await j.put(f, 'second\n', '0644')).toBe(true);
    expect(readFileSync(`${f}${SUFFIX}`).equals(original)).toBe(true);
    expect(record().replaced).toEqual([{ path: f, backup: `${f}${SUFFIX}` }]);
    expect(j.backupOf(f)).toBe(`${f}${SUFFIX}`);
    // Only what it created is removed: a replaced file stays.
    expect(await j.remove(f)).toBe(false);
    expect(readFileSync(f, 'utf8')).toBe('second\n');

    await (await NodeJournal.open(local, stateFile, SUFFIX)).undo();
    expect(readFileSync(f).equals(original)).toBe(true);
    expect(statSync(f).mode & 0o777).toBe(0o604);
    expect(tree()).toEqual(before);
  });

  it('is idempotent by content; once leaves a file of its own alone; remove removes what it created', async () => {
    const f = join(root, 'bin/runsc');
    const j = await NodeJournal.open(local, stateFile, SUFFIX);
    expect(await j.put(f, 'x', '0755')).toBe(true);
    const written = readFileSync(stateFile, 'utf8');
    expect(await j.put(f, 'x', '0755')).toBe(false);
    expect(await j.put(f, 'y', '0755', { once: true })).toBe(false);
    expect(readFileSync(f, 'utf8')).toBe('x');
    expect(readFileSync(stateFile, 'utf8')).toBe(written);
    expect(await j.remove(f)).toBe(true);
    expect(existsSync(f)).toBe(false);
    await j.save();
    expect(record().created).toEqual([]);
  });

  it('keeps the caller fields in the same record, and makes dirs it records', async () => {
    const j = await NodeJournal.open<{ wasActive: boolean; runBefore: string[] }>(local, stateFile, '.gvisor-e2e-vm.orig');
    Object.assign(j.extra, { wasActive: true, runBefore: ['a'] });
    await j.mkdirs(join(root, 'opt/cni/bin'));
    expect(statSync(join(root, 'opt/cni/bin')).isDirectory()).toBe(true);
    const r = record();
    expect(r).toMatchObject({ created: [], replaced: [], wasActive: true, runBefore: ['a'] });
    expect(r.dirs).toEqual(expect.arrayContaining([join(root, 'opt'), join(root, 'opt/cni'), join(root, 'opt/cni/bin')]));
    const again = await NodeJournal.open<{ wasActive: boolean; runBefore: string[] }>(local, stateFile, '.gvisor-e2e-vm.orig');
    expect(again.extra.wasActive).toBe(true);
    const seen: string[] = [];
    // The caller's own undo runs while the record is still there.
    expect(await again.undo(async () => (seen.push(String(existsSync(stateFile))), ['extra']))).toEqual(['extra']);
    expect(seen).toEqual(['true']);
    expect(existsSync(join(root, 'opt'))).toBe(false);
    expect(existsSync(stateFile)).toBe(false);
  });

  it('a crash after the record, before a new file is written: undo acts on the record', async () => {
    const before = tree();
    const f = join(root, 'etc/systemd/system/containerd.service.d/50-limit.conf');
    const j = await NodeJournal.open(crashingNode(/cat > .*50-limit\.conf/), stateFile, SUFFIX);
    await expect(j.put(f, '[Service]\n', '0644')).rejects.toThrow('killed');
    expect(record().created).toEqual([f]);
    expect(existsSync(f)).toBe(false);
    await (await NodeJournal.open(local, stateFile, SUFFIX)).undo();
    expect(tree()).toEqual(before);
  });

  it('a crash after the record, before the backup: the file is intact, and a re-run backs it up before writing', async () => {
    const f = join(root, 'etc/containerd/config.toml');
    mkdirSync(join(root, 'etc/containerd'), { recursive: true });
    const original = randomBytes(5000);
    writeFileSync(f, original);
    const before = tree();

    const j = await NodeJournal.open(crashingNode(/cp -p/), stateFile, SUFFIX);
    await expect(j.put(f, 'rendered\n', '0644')).rejects.toThrow('killed');
    expect(record().replaced).toEqual([{ path: f, backup: `${f}${SUFFIX}` }]);
    expect(readFileSync(f).equals(original)).toBe(true);
    // undo tolerates the backup that was never taken.
    await (await NodeJournal.open(local, stateFile, SUFFIX)).undo();
    expect(readFileSync(f).equals(original)).toBe(true);
    expect(tree()).toEqual(before);

    // Crash again at the same point, then run again: the backup is taken before the write.
    await expect((await NodeJournal.open(crashingNode(/cp -p/), stateFile, SUFFIX)).put(f, 'rendered\n', '0644')).rejects.toThrow('killed');
    expect(await (await NodeJournal.open(local, stateFile, SUFFIX)).put(f, 'rendered\n', '0644')).toBe(true);
    expect(readFileSync(`${f}${SUFFIX}`).equals(original)).toBe(true);
    await (await NodeJournal.open(local, stateFile, SUFFIX)).undo();
    expect(readFileSync(f).equals(original)).toBe(true);
    expect(tree()).toEqual(before);
  });

  it('a crash after the backup, before the write: undo restores the original', async () => {
    const f = join(root, 'etc/runsc.toml');
    mkdirSync(join(root, 'etc'), { recursive: true });
    writeFileSync(f, 'mine\n');
    const j = await NodeJournal.open(crashingNode(/cat > .*runsc\.toml/), stateFile, SUFFIX);
    await expect(j.put(f, 'theirs\n', '0644')).rejects.toThrow('killed');
    expect(existsSync(`${f}${SUFFIX}`)).toBe(true);
    await (await NodeJournal.open(local, stateFile, SUFFIX)).undo();
    expect(readFileSync(f, 'utf8')).toBe('mine\n');
    expect(existsSync(`${f}${SUFFIX}`)).toBe(false);
  });

  it('reads records written before the journal (no dirs), and names a corrupt one', async () => {
    const f = join(root, 'made');
    mkdirSync(join(root, 'var/lib/gvisor-e2e'), { recursive: true });
    writeFileSync(f, 'x');
    writeFileSync(stateFile, JSON.stringify({ created: [f], replaced: [] }));
    expect(await (await NodeJournal.open(local, stateFile, SUFFIX)).undo()).toEqual([f]);
    expect(existsSync(f)).toBe(false);
    writeFileSync(stateFile, '{"created": [');
    await expect(NodeJournal.open(local, stateFile, SUFFIX)).rejects.toThrow(`[local-1] ${stateFile} is corrupt`);
  });

  it('a file sha256sum cannot read is an error, not "absent": nothing is overwritten, and the original survives undo', async () => {
    const f = join(root, 'etc/containerd/config.toml');
    mkdirSync(join(root, 'etc/containerd'), { recursive: true });
    writeFileSync(f, 'original\n');
    // The node's shell, with a sha256sum that fails (missing coreutils, an I/O error).
    const broken: NodeAccess = { ...crashingNode(/^$/), exec: (c: string, o?: ExecOptions) => local.exec(`sha256sum() { echo "sha256sum: I/O error" >&2; return 1; }\n${c}`, o) };
    const j = await NodeJournal.open(broken, stateFile, SUFFIX);
    await expect(j.put(f, 'rendered\n', '0644')).rejects.toThrow(`[local-1] cannot read ${f} to compare it (sha256sum exited 1: sha256sum: I/O error); nothing was changed`);
    expect(readFileSync(f, 'utf8')).toBe('original\n');
    expect(existsSync(stateFile) ? record().created : []).not.toContain(f);
    await (await NodeJournal.open(local, stateFile, SUFFIX)).undo();
    expect(readFileSync(f, 'utf8')).toBe('original\n');
  });

  it("undo keeps a replaced file someone changed after the harness wrote it (and says so), removes created ones, restores the rest", async () => {
    const edited = join(root, 'etc/config.toml');
    const created = join(root, 'etc/new.conf');
    const untouched = join(root, 'etc/runsc.toml');
    mkdirSync(join(root, 'etc'), { recursive: true });
    writeFileSync(edited, 'original\n');
    writeFileSync(untouched, 'original runsc\n');
    const j = await NodeJournal.open(local, stateFile, SUFFIX);
    await j.put(edited, 'ours\n', '0644');
    await j.put(created, 'ours\n', '0644');
    await j.put(untouched, 'ours runsc\n', '0644');
    await j.save();
    // Another tool edits two of them after install.
    writeFileSync(edited, 'ours\nplus an operator edit\n');
    writeFileSync(created, 'ours, edited\n');
    const u = await NodeJournal.open(local, stateFile, SUFFIX);
    expect(await u.undo()).toEqual([untouched, created]);
    expect(readFileSync(untouched, 'utf8')).toBe('original runsc\n');
    expect(readFileSync(edited, 'utf8')).toBe('ours\nplus an operator edit\n');
    expect(readFileSync(`${edited}${SUFFIX}`, 'utf8')).toBe('original\n');
    expect(existsSync(created)).toBe(false);
    expect(u.kept).toEqual([
      { path: edited, why: `changed since gvisor-e2e wrote it; left as it is, the original is kept at ${edited}${SUFFIX}` },
      { path: created, why: 'gvisor-e2e created it and it changed since; removed all the same (the node had no such file before)' },
    ]);
  });
});
