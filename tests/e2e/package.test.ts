// The npm package as a user gets it: `npm pack`, installed from the tarball into an empty folder,
// runs on plain Node (no tsx, no TypeScript): --help, `init` writes a config the schema check
// accepts, and `run --list` loads the built suites from dist/ with vitest.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ROOT, scratch } from './helpers.ts';

const dir = scratch('package');
const app = join(dir, 'app');
const bin = join(app, 'node_modules', '.bin', 'gvisor-e2e');

function sh(cmd: string, args: string[], cwd: string): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 600_000, env: { ...process.env, NODE_OPTIONS: '' } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(() => {
  const pack = sh('npm', ['pack', '--pack-destination', dir], ROOT);
  expect(pack.code, pack.stderr.slice(-3000)).toBe(0);
  const tarball = join(dir, pack.stdout.trim().split('\n').at(-1)!);
  expect(existsSync(tarball)).toBe(true);
  sh('mkdir', ['-p', app], dir);
  // The registry mirror, preferring npm's cache: no network round trip for what it has.
  const install = sh('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], app);
  expect(install.code, install.stderr.slice(-3000)).toBe(0);
}, 900_000);

describe('the installed package', () => {
  it('runs on plain Node without tsx: --help lists the commands', () => {
    expect(existsSync(join(app, 'node_modules', 'tsx'))).toBe(false);
    expect(readFileSync(join(app, 'node_modules', 'gvisor-e2e', 'dist', 'bin', 'gvisor-e2e.js'), 'utf8').split('\n')[0]).toBe('#!/usr/bin/env node');
    const r = sh(bin, ['--help'], app);
    expect(r.code, r.stderr).toBe(0);
    for (const c of ['init', 'doctor', 'install', 'run', 'report', 'down']) expect(r.stdout).toMatch(new RegExp(`^  ${c} `, 'm'));
  });

  it('ships the JSON Schema of summary.json', () => {
    const schema = JSON.parse(readFileSync(join(app, 'node_modules', 'gvisor-e2e', 'reports', 'summary.schema.json'), 'utf8'));
    expect(schema.properties.schemaVersion.const).toBe(1);
  });

  it('init writes a commented config that loads; run --list runs the built suites from dist/; init never overwrites', () => {
    const i = sh(bin, ['init', 'local'], app);
    expect(i.code, i.stderr).toBe(0);
    expect(readFileSync(join(app, 'gvisor-e2e.yaml'), 'utf8')).toMatch(/^# /m);
    const list = sh(bin, ['run', '--list'], app);
    expect(list.code, list.stderr.slice(-3000)).toBe(0);
    expect(list.stdout).toContain('cluster "gvisor-e2e" (provider local)');
    expect(list.stdout).toContain('[<each node of pool gvisor>] runsc is installed at /var/bin/containerruntimes/runsc and executable');
    const again = sh(bin, ['init', 'nodes'], app);
    expect(again.code).toBe(64);
    expect(again.stderr).toContain('gvisor-e2e.yaml exists; not overwritten');
  });
});
