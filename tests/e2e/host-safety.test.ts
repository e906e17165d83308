// Do no harm on the machine the harness runs on: a state directory it did not make is neither
// used nor removed; stopping a node signals only the node's own processes.
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, scratch, writeConfig } from './helpers.ts';

/** Every file and directory under `dir`, relative, sorted. */
function tree(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort();
}

describe('a stateDir the harness did not make', () => {
  it('`stateDir: .` next to the config and its keys: up, run and down exit 64 naming the file and field, and nothing is deleted', () => {
    const dir = scratch('statedir-dot');
    // What a user keeps beside a config, including directories named like the harness's own.
    writeFileSync(join(dir, 'id_ed25519'), 'not a real key\n', { mode: 0o600 });
    writeFileSync(join(dir, 'known_hosts'), '[127.0.0.1]:22 ssh-ed25519 AAAA\n');
    mkdirSync(join(dir, 'nodes', 'gvisor-1'), { recursive: true });
    writeFileSync(join(dir, 'nodes', 'gvisor-1', 'notes.txt'), 'mine\n');
    mkdirSync(join(dir, 'control-plane'));
    writeFileSync(join(dir, 'control-plane', 'plan.md'), 'mine\n');
    const cfg = writeConfig(dir, 'gvisor-e2e.yaml', {
      apiVersion: 'gvisor-e2e.dev/v1alpha1',
      kind: 'Config',
      cluster: { provider: 'local', name: `dot${process.pid}`, stateDir: '.', pools: [{ name: 'gvisor', kind: 'host' }] },
      gvisor: { pools: ['gvisor'] },
      reportsDir: scratch('statedir-dot-reports'),
    });
    const before = tree(dir);
    for (const verb of ['down', 'up', 'run']) {
      const r = cli(['--config', cfg, verb]);
      expect(r.code, `${verb}: ${r.stderr.slice(-1500)}`).toBe(64);
      expect(r.stderr).toContain(`${cfg}: cluster.stateDir: ${dir} exists and holds files but no gvisor-e2e record (state.json)`);
      expect(tree(dir)).toEqual(before);
    }
    expect(readFileSync(join(dir, 'nodes', 'gvisor-1', 'notes.txt'), 'utf8')).toBe('mine\n');
    expect(existsSync(join(dir, 'state.json'))).toBe(false);
  });
});
