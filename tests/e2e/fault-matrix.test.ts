import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { down, up } from '../../bin/app.ts';
import { parseConfig } from '../../clusters/index.ts';
import type { Config, NodeConfig } from '../../harness/config.ts';
import { ROOT, cli, expectLocalClusterGone, localCluster, nodeSnapshot, scratch, writeConfig } from './helpers.ts';

// The fault matrix of the do-no-harm issue: the CLI is killed (SIGKILL, or SIGINT) at each step of
// `install` on `provider: nodes` (real SSH hosts: the nodes of a local cluster, made first), then
// `down` runs: every node must be byte-for-byte as it was before (the files the harness may touch,
// their modes, and the images in containerd). And `up` of the local provider killed at each step,
// then `down`: no process, mount, link or directory of it is left on the host.

const dir = scratch('fault-matrix');
const name = `fm${process.pid}`;
const hostsRaw = localCluster(name, join(dir, 'host-reports'), { pools: [{ name: 'gvisor', kind: 'host' }, { name: 'plain', kind: 'host' }] }, { gvisor: { pools: ['gvisor'] } });
const hostsCfg: Config = parseConfig(JSON.stringify(hostsRaw), 'fault matrix: the hosts');
let nodes: NodeConfig[] = [];
let nodesCfgPath = '';


/** The CLI in a child; killed with `signal` when its log has `atLine` lines (or left to finish). */
function killedAt(args: string[], atLine: number, signal: NodeJS.Signals): Promise<{ code: number | null; lines: string[] }> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'bin/gvisor-e2e.ts'), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  let sent = false;
  child.stdout.resume();
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
    if (!sent && err.split('\n').length - 1 >= atLine) {
      sent = true;
      child.kill(signal);
    }
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
  return new Promise((res) =>
    child.on('exit', (code) => {
      clearTimeout(timer);
      res({ code, lines: err.split('\n').filter(Boolean) });
    }),
  );
}

beforeAll(async () => {
  nodes = await up(hostsCfg);
  // The same hosts, now as the user's own nodes reached over SSH.
  nodesCfgPath = writeConfig(dir, 'nodes.yaml', {
    apiVersion: 'gvisor-e2e.dev/v1alpha1',
    kind: 'Config',
    cluster: { provider: 'nodes', nodes: nodes.map((n) => ({ name: n.name, pool: n.pool, access: n.access, paths: n.paths, containerd: n.containerd })) },
    gvisor: { pools: ['gvisor'] },
    containerd: { enableLimitNoFile: true, imagePullProgressTimeout: '5m0s' },
    reportsDir: join(dir, 'reports'),
  });
}, 600_000);

afterAll(async () => {
  await down(hostsCfg);
  expectLocalClusterGone(name);
});

describe('install killed at each step, then down', () => {
  it('leaves every node as it was before, byte for byte', async () => {
    const before = await Promise.all(nodes.map(nodeSnapshot));
    // A whole install first: how many log lines it has is how many places there are to kill it.
    const full = await killedAt(['--config', nodesCfgPath, 'install'], Number.MAX_SAFE_INTEGER, 'SIGKILL');
    expect(full.code, full.lines.slice(-20).join('\n')).toBe(0);
    expect(await Promise.all(nodes.map(nodeSnapshot))).not.toEqual(before);
    const d0 = cli(['--config', nodesCfgPath, 'down']);
    expect(d0.code, d0.stderr.slice(-2000)).toBe(0);
    expect(await Promise.all(nodes.map(nodeSnapshot))).toEqual(before);
    const steps = full.lines.length;
    expect(steps).toBeGreaterThan(5);
    const seen: string[] = [];
    for (let at = 1; at < steps; at++) {
      const signal: NodeJS.Signals = at % 2 ? 'SIGKILL' : 'SIGINT';
      const r = await killedAt(['--config', nodesCfgPath, 'install'], at, signal);
      seen.push(`${signal} after "${r.lines[at - 1] ?? '(end)'}" → exit ${r.code}`);
      const d = cli(['--config', nodesCfgPath, 'down']);
      expect(d.code, `${seen.at(-1)}: down: ${d.stderr.slice(-2000)}`).toBe(0);
      const after = await Promise.all(nodes.map(nodeSnapshot));
      for (let i = 0; i < nodes.length; i++) expect(after[i], `${nodes[i]!.name} after ${seen.at(-1)}`).toBe(before[i]);
    }
    expect(seen.length).toBe(steps - 1);
  }, 1_800_000);
});

describe('up of the local provider killed at each step, then down', () => {
  it('leaves no process, mount, link or directory of the cluster', async () => {
    const lname = `fu${process.pid}`;
    const cfgPath = writeConfig(dir, 'local.yaml', localCluster(lname, join(dir, 'local-reports'), { pools: [{ name: 'gvisor', kind: 'host' }, { name: 'plain', kind: 'host' }] }, { gvisor: { pools: ['gvisor'] } }));
    const full = await killedAt(['--config', cfgPath, 'up'], Number.MAX_SAFE_INTEGER, 'SIGKILL');
    expect(full.code, full.lines.join('\n')).toBe(0);
    expect(cli(['--config', cfgPath, 'down']).code).toBe(0);
    expectLocalClusterGone(lname);
    for (let at = 1; at < full.lines.length; at++) {
      const signal: NodeJS.Signals = at % 2 ? 'SIGKILL' : 'SIGINT';
      await killedAt(['--config', cfgPath, 'up'], at, signal);
      const d = cli(['--config', cfgPath, 'down']);
      expect(d.code, `${signal} at line ${at}: down: ${d.stderr.slice(-2000)}`).toBe(0);
      expectLocalClusterGone(lname);
    }
  }, 1_800_000);
});
