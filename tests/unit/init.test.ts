// `init`: each starter config passes the config schema check `doctor` runs (once the files it names
// are there), is commented, and is never written over an existing file; `install --dry-run`'s diffs.
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { changeDiff } from '../../bin/app.ts';
import { INIT_KINDS, starterConfig, writeStarterConfig } from '../../bin/init.ts';
import { loadConfig } from '../../clusters/index.ts';
import { ConfigError } from '../../harness/errors.ts';

describe('init', () => {
  const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-init-'));
  // What the starters name: the user's SSH key and known_hosts, a cluster's kubeconfig.
  writeFileSync(join(dir, 'id_ed25519'), 'key');
  writeFileSync(join(dir, 'known_hosts'), '');
  writeFileSync(join(dir, 'kubeconfig'), 'apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]\nusers: [{name: u, user: {}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n');

  it.each(INIT_KINDS)('%s: a commented config that loads, for that provider', (kind) => {
    const file = join(dir, `${kind}.yaml`);
    writeStarterConfig(kind, file);
    const text = readFileSync(file, 'utf8');
    expect(text.split('\n').filter((l) => l.trim().startsWith('#')).length).toBeGreaterThan(2);
    const cfg = loadConfig(file);
    expect(cfg.cluster.provider).toBe(kind);
    expect(cfg.gvisor.pools).toEqual(['gvisor']);
  });

  it('without the SSH key it names, the config is refused naming the field (doctor says the same)', () => {
    const d = mkdtempSync(join(tmpdir(), 'gvisor-e2e-init-'));
    writeFileSync(join(d, 'c.yaml'), starterConfig('nodes'));
    expect(() => loadConfig(join(d, 'c.yaml'))).toThrow(/cluster\.nodes\[0\]\.access\.privateKeyPath: cannot read .*id_ed25519: ENOENT/);
  });

  it('never overwrites a file, and rejects an unknown kind', () => {
    const file = join(dir, 'local.yaml');
    const before = readFileSync(file, 'utf8');
    expect(() => writeStarterConfig('kind', file)).toThrow(`command line: init: ${file} exists; not overwritten`);
    expect(readFileSync(file, 'utf8')).toBe(before);
    expect(() => writeStarterConfig('gke', join(dir, 'x.yaml'))).toThrow(ConfigError);
    expect(existsSync(join(dir, 'x.yaml'))).toBe(false);
  });
});

describe('install --dry-run diffs', () => {
  it('a changed text file is a unified diff with its path and mode', () => {
    const d = changeDiff({ path: '/etc/containerd/runsc.toml', mode: '0644', before: '[runsc_config]\n  net-raw = "false"\n', after: '[runsc_config]\n  net-raw = "true"\n' });
    expect(d).toBe('--- /etc/containerd/runsc.toml\n+++ /etc/containerd/runsc.toml (mode 0644)\n@@ -1,2 +1,2 @@\n [runsc_config]\n-  net-raw = "false"\n+  net-raw = "true"\n');
  });
  it('a new file diffs from /dev/null; a binary is named with its size and hash; a removal says why', () => {
    expect(changeDiff({ path: '/x/new.conf', mode: '0644', after: 'a\n' })).toMatch(/^--- \/dev\/null\n\+\+\+ \/x\/new.conf \(mode 0644\)\n@@ -0,0 \+1 @@\n\+a\n$/);
    expect(changeDiff({ path: '/x/runsc', mode: '0755', after: Buffer.from([0, 1, 2]) })).toBe(
      '--- /x/runsc\n(binary: would be created (mode 0755), 3 bytes, sha256 ae4b3280e56e2faf83f414a6e3dabe9d5fbe18976544c05fed121accb85b53fc)\n',
    );
    expect(changeDiff({ path: '/x/old.conf', before: 'a' })).toContain('would be removed');
  });
});
