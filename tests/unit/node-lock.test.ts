// The per-node lock of install/uninstall, on a real local node (a lock directory of the test's own).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { nodeConfig } from '../../harness/config.ts';
import { withNodeLock } from '../../harness/installer.ts';
import { LocalNode } from '../../harness/node.ts';
import { processStartTime } from '../../harness/state.ts';

const top = mkdtempSync(join(tmpdir(), 'gvisor-e2e-unit-lock-'));
afterAll(() => rmSync(top, { recursive: true, force: true }));
const local = new LocalNode(nodeConfig({ name: 'local-1', pool: 'p', access: { type: 'local' } }));

describe('withNodeLock', () => {
  it('a second holder waits until the first is done, then runs; the lock is gone afterwards', async () => {
    const lock = join(top, 'a.lock');
    const events: string[] = [];
    let release!: () => void;
    const first = withNodeLock(local, 'install', () => new Promise<void>((r) => { events.push('first in'); release = () => { events.push('first out'); r(); }; }), { lock });
    while (!events.length) await new Promise((r) => setTimeout(r, 20));
    expect(readFileSync(join(lock, 'owner'), 'utf8')).toBe(`${hostname()} ${process.pid} ${processStartTime(process.pid)} install`);
    const second = withNodeLock(local, 'uninstall', async () => void events.push('second in'), { lock });
    await new Promise((r) => setTimeout(r, 2500));
    expect(events).toEqual(['first in']);
    release();
    await Promise.all([first, second]);
    expect(events).toEqual(['first in', 'first out', 'second in']);
    expect(existsSync(lock)).toBe(false);
  });

  it("replaces the lock of a process on this host that is gone (a SIGKILLed run)", async () => {
    const lock = join(top, 'b.lock');
    // A real process that has exited: its pid and start time no longer match a running one.
    const dead = spawnSync('sh', ['-c', 'echo $$']).stdout.toString().trim();
    spawnSync('sh', ['-c', `mkdir ${lock} && printf '%s' '${hostname()} ${dead} 12345 install' > ${lock}/owner`]);
    expect(await withNodeLock(local, 'install', async () => 'ran', { lock, waitMs: 10_000 })).toBe('ran');
  });

  it('a live holder is named when the wait times out', async () => {
    const lock = join(top, 'c.lock');
    spawnSync('sh', ['-c', `mkdir ${lock} && printf '%s' 'other-host 4242 999 install' > ${lock}/owner`]);
    await expect(withNodeLock(local, 'install', async () => 'ran', { lock, waitMs: 1_000 })).rejects.toThrow(
      `the lock ${lock} on local-1 (held by other-host 4242 999 install)`,
    );
    expect(readFileSync(join(lock, 'owner'), 'utf8')).toBe('other-host 4242 999 install');
  });
});
