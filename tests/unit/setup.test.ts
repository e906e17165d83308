// `npm start` installs only what the main job needs; `npm test` adds what only the tests use.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');
const setup = (...args: string[]) => spawnSync('bash', [join(ROOT, '.ci', 'setup'), ...args], { encoding: 'utf8' });
const list = (job: string) => setup('--for', job, '--list').stdout.trim().split('\n');
const TEST_ONLY = ['chromium', 'docker.io', 'qemu-system-x86', 'qemu-utils', 'containerd', 'runsc', 'gcc', 'libc6-dev'];

describe('.ci/setup --for main|test', () => {
  it('the main job gets none of the test-only packages; the tests get those and all of the main job\'s', () => {
    const main = list('main');
    expect(main).toEqual(expect.arrayContaining(['runc', 'containernetworking-plugins', 'openssh-server', 'systemd-container', 'debootstrap', 'busybox-static']));
    for (const p of TEST_ONLY) expect(main).not.toContain(p);
    expect([...list('test')].sort()).toEqual([...main, ...TEST_ONLY].sort());
  });

  it("package.json: `npm start` sets up for main, `npm test` for test", () => {
    const scripts = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts;
    expect(scripts.start).toMatch(/^bash \.ci\/setup --for main && /);
    expect(scripts.test).toMatch(/^bash \.ci\/setup --for test && /);
  });

  it('an unknown job or argument exits 64 before doing anything', () => {
    for (const args of [['--for', 'prod', '--list'], ['--frob']]) {
      const r = setup(...args);
      expect(r.status).toBe(64);
      expect(r.stdout).toBe('');
    }
  });
});
