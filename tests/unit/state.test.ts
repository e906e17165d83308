// The state file helper and the cluster lock: atomic writes, the owner marker, who holds a lock.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../harness/errors.ts';
import { checkStateDir, processStartTime, StateFile, withClusterLock, writeFileAtomic } from '../../harness/state.ts';

const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-state-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('StateFile', () => {
  it('writes the record with its owner, private, and reads it back', () => {
    const f = new StateFile<{ nodes: string[] }>(join(dir, 'a'), { provider: 'local', cluster: 'a' });
    expect(f.read()).toBeUndefined();
    f.write({ nodes: ['n1'] });
    expect(JSON.parse(readFileSync(f.file, 'utf8'))).toEqual({ owner: { provider: 'local', cluster: 'a', madeDir: true }, nodes: ['n1'] });
    expect(statSync(f.file).mode & 0o777).toBe(0o600);
    expect(statSync(f.dir).mode & 0o777).toBe(0o700);
    expect(f.read()).toMatchObject({ nodes: ['n1'] });
    // No temporary file is left beside it.
    expect(readdirSync(f.dir)).toEqual(['state.json']);
  });

  it("refuses another provider's record, naming its cluster and provider", () => {
    new StateFile(join(dir, 'b'), { provider: 'kind', cluster: 'b' }).write({});
    const mine = new StateFile(join(dir, 'b'), { provider: 'local', cluster: 'b' });
    expect(() => mine.read()).toThrow(/state.json belongs to another provider's cluster "b" \(kind\)/);
  });

  it('takes a record from before the marker only where the provider recognises it', () => {
    const d = join(dir, 'legacy');
    new StateFile(d, { provider: 'x', cluster: 'legacy' }).write({});
    writeFileSync(join(d, 'state.json'), JSON.stringify({ provider: 'kind', cluster: 'legacy', nodes: [] }));
    const kind = new StateFile(d, { provider: 'kind', cluster: 'legacy' }, (s) => s.provider === 'kind');
    const local = new StateFile(d, { provider: 'local', cluster: 'legacy' }, (s) => s.provider === undefined);
    expect(kind.read()).toMatchObject({ nodes: [] });
    expect(() => local.read()).toThrow(/belongs to another provider's cluster "legacy"/);
  });

  it("remove() takes the directory only while it holds this provider's record", () => {
    const d = join(dir, 'rm');
    const f = new StateFile<{ n: number }>(d, { provider: 'local', cluster: 'rm' });
    f.claim({ n: 1 });
    writeFileSync(join(d, 'made-by-us'), 'x');
    f.remove();
    expect(existsSync(d)).toBe(false);
    // A stateDir pointing at a directory the harness did not make: nothing in it is touched.
    mkdirSync(d);
    writeFileSync(join(d, 'users-file'), 'keep');
    f.remove();
    expect(readFileSync(join(d, 'users-file'), 'utf8')).toBe('keep');
    rmSync(d, { recursive: true });
    // Another provider's record is refused, not removed.
    new StateFile(d, { provider: 'kind', cluster: 'rm' }).write({});
    writeFileSync(join(d, 'kinds-file'), 'keep');
    expect(() => f.remove()).toThrow(/belongs to another provider's cluster/);
    expect(existsSync(join(d, 'kinds-file'))).toBe(true);
    rmSync(d, { recursive: true });
    // An empty directory without a record is not ours either: it stays.
    mkdirSync(d);
    f.remove();
    expect(existsSync(d)).toBe(true);
    rmSync(d, { recursive: true });
  });

  it('never writes its record into a directory that holds files but no record (exit 64), and leaves it as it was', () => {
    const d = join(dir, 'foreign');
    mkdirSync(d);
    writeFileSync(join(d, 'gvisor-e2e.yaml'), 'keep');
    const f = new StateFile<{ n: number }>(d, { provider: 'local', cluster: 'f' });
    expect(() => f.write({ n: 1 })).toThrow(ConfigError);
    expect(() => f.claim({ n: 1 })).toThrow(/holds files but no gvisor-e2e record \(state.json\)/);
    expect(() => f.checkOwnership()).toThrow(ConfigError);
    f.remove();
    expect(readdirSync(d)).toEqual(['gvisor-e2e.yaml']);
  });

  it('checkStateDir names the config file and the field', () => {
    const d = join(dir, 'named');
    mkdirSync(d);
    writeFileSync(join(d, 'id_ed25519'), 'key');
    try {
      checkStateDir(d, '/etc/cfg.yaml');
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      expect((e as Error).message).toMatch(new RegExp(`^/etc/cfg.yaml: cluster.stateDir: ${d} exists and holds files but no gvisor-e2e record`));
    }
    checkStateDir(join(dir, 'absent'), 'c.yaml');
    mkdirSync(join(dir, 'empty'));
    checkStateDir(join(dir, 'empty'), 'c.yaml');
  });

  it('adopts an empty directory it did not make: down empties it and leaves the directory', () => {
    const d = join(dir, 'adopted');
    mkdirSync(d);
    const f = new StateFile<{ n: number }>(d, { provider: 'local', cluster: 'ad' });
    f.claim({ n: 1 });
    f.write({ n: 2 });
    expect(JSON.parse(readFileSync(f.file, 'utf8'))).toMatchObject({ owner: { madeDir: false }, n: 2 });
    mkdirSync(join(d, 'nodes'));
    writeFileSync(join(d, 'nodes', 'x'), 'ours');
    f.remove();
    expect(existsSync(d)).toBe(true);
    expect(readdirSync(d)).toEqual([]);
    rmSync(d, { recursive: true });
  });

  it('writeFileAtomic replaces the whole file or nothing', () => {
    const p = join(dir, 'atomic.json');
    writeFileAtomic(p, 'one');
    writeFileAtomic(p, 'two');
    expect(readFileSync(p, 'utf8')).toBe('two');
    expect(() => writeFileAtomic(join(dir, 'no-such-dir', 'x'), 'y')).toThrow(/ENOENT/);
    expect(existsSync(join(dir, 'no-such-dir'))).toBe(false);
  });
});

describe('withClusterLock', () => {
  it('is held while the verb runs, re-entrant in one process, and gone after', async () => {
    const state = join(dir, 'lock-a');
    await withClusterLock(state, 'run', async () => {
      const holder = JSON.parse(readFileSync(`${state}.lock`, 'utf8'));
      expect(holder).toMatchObject({ pid: process.pid, command: 'run', host: hostname() });
      await withClusterLock(state, 'up', async () => expect(existsSync(`${state}.lock`)).toBe(true));
      expect(existsSync(`${state}.lock`)).toBe(true);
    });
    expect(existsSync(`${state}.lock`)).toBe(false);
  });

  it('a live holder (another process) is waited for, then named with its pid and command', async () => {
    const state = join(dir, 'lock-b');
    const other = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      await new Promise((r) => setTimeout(r, 100));
      writeFileSync(`${state}.lock`, JSON.stringify({ pid: other.pid, start: processStartTime(other.pid!), host: hostname(), command: 'down', since: '2026-12-02T00:00:00Z' }));
      const ran: string[] = [];
      await expect(withClusterLock(state, 'run', async () => ran.push('ran'), 1_000)).rejects.toThrow(
        new RegExp(`in use by pid ${other.pid} \\(\`gvisor-e2e down\`, since 2026-12-02T00:00:00Z\\); gave up after 1s`),
      );
      expect(ran).toEqual([]);
      // The other holder's lock is left alone.
      expect(JSON.parse(readFileSync(`${state}.lock`, 'utf8')).pid).toBe(other.pid);
    } finally {
      other.kill('SIGKILL');
    }
  });

  it('a lock whose holder died (or whose pid was reused) is taken over', async () => {
    const state = join(dir, 'lock-c');
    // Our own pid with another start time: a recycled pid, not the holder.
    writeFileSync(`${state}.lock`, JSON.stringify({ pid: process.pid, start: '1', host: hostname(), command: 'run', since: 'then' }));
    let ran = false;
    await withClusterLock(state, 'down', async () => {
      ran = true;
    });
    expect(ran).toBe(true);
    expect(existsSync(`${state}.lock`)).toBe(false);
  });
});
