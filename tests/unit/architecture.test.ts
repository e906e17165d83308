// The layering the README promises, checked on the source: harness/ and suites/ know no provider,
// and every registered provider answers the whole interface.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { capabilitiesOf, loadConfig, parseConfig, providerFor } from '../../clusters/index.ts';

const ROOT = join(import.meta.dirname, '../..');
const sources = (dir: string): string[] =>
  readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => join(dir, f));

describe('layers point one way', () => {
  it('harness/ and suites/ import nothing from clusters/ or bin/', () => {
    const offenders = [...sources('harness'), ...sources('suites')].filter((f) => /from '(\.\.\/)+(clusters|bin)\//.test(readFileSync(join(ROOT, f), 'utf8')));
    expect(offenders).toEqual([]);
  });

  it('harness/ imports nothing from suites/ (the suites and their spec sit above it)', () => {
    expect(sources('harness').filter((f) => /from '(\.\.\/)+suites\//.test(readFileSync(join(ROOT, f), 'utf8')))).toEqual([]);
  });

  it('clusters/ imports nothing from bin/', () => {
    expect(sources('clusters').filter((f) => /from '(\.\.\/)+bin\//.test(readFileSync(join(ROOT, f), 'utf8')))).toEqual([]);
  });

  it('no provider is asked for by name outside clusters/ (no comparison of cluster.provider with a name, no switch over it)', () => {
    const byName = /\.provider\s*[!=]==\s*'|'\w+'\s*[!=]==\s*[\w.]*\.provider\b|switch \([^)]*\.provider\)/;
    const switches = [...sources('harness'), ...sources('suites'), ...sources('bin')].filter((f) => byName.test(readFileSync(join(ROOT, f), 'utf8')));
    expect(switches).toEqual([]);
  });
});

const KEY = `${ROOT}/tests/unit/fixtures/keys/id_ed25519`;
const CLUSTERS: Record<string, string> = {
  nodes: 'provider: nodes\n  nodes: [{ name: n1, pool: gvisor, access: { type: local } }]',
  local: 'provider: local\n  stateDir: /tmp/gvisor-e2e-arch-local\n  pools: [{ name: gvisor }]',
  kind: 'provider: kind\n  stateDir: /tmp/gvisor-e2e-arch-kind\n  pools: [{ name: gvisor }]',
  existing: 'provider: existing\n  kubeconfig: /nonexistent/kubeconfig\n  stateDir: /tmp/gvisor-e2e-arch-existing',
  vm: `provider: vm\n  hosts: [{ name: h1, pool: gvisor, address: 127.0.0.1, privateKeyPath: ${KEY}, hostKeyFingerprint: "SHA256:${'A'.repeat(43)}" }]`,
};

describe('every registered provider', () => {
  it.each(Object.keys(CLUSTERS))('%s: makes a provider that answers info(), secrets() and the capabilities the registry reports', (name) => {
    const cfg = parseConfig(`apiVersion: gvisor-e2e.dev/v1alpha1\nkind: Config\ncluster:\n  ${CLUSTERS[name]}\ngvisor:\n  pools: [gvisor]\n`, `${name}.yaml`);
    const p = providerFor(cfg);
    const info = p.info();
    expect(info.provider).toBe(name);
    expect(info.cluster).toBe(cfg.cluster.name);
    expect(info.capabilities).toEqual(capabilitiesOf(cfg));
    expect(Object.keys(info.capabilities).sort()).toEqual(['cleansUpAfterRun', 'installsNodes', 'kubernetesApi', 'reshapesPools']);
    const s = p.secrets();
    expect(Array.isArray(s.keyFiles) && Array.isArray(s.kubeconfigs)).toBe(true);
    for (const m of ['up', 'down', 'uninstall', 'doctor', 'collectLogs', 'kubeconfig', 'installKubernetesObjects', 'recordOnNode', 'warm'] as const) expect(typeof p[m]).toBe('function');
  });

  it('the secrets a provider holds are the files its config names', () => {
    const vm = parseConfig(`apiVersion: gvisor-e2e.dev/v1alpha1\nkind: Config\ncluster:\n  ${CLUSTERS.vm}\n  kubeconfig: /k/config\ngvisor:\n  pools: [gvisor]\n`, 'vm.yaml');
    expect(providerFor(vm).secrets()).toEqual({ keyFiles: [KEY], kubeconfigs: ['/k/config'] });
    const ex = parseConfig(`apiVersion: gvisor-e2e.dev/v1alpha1\nkind: Config\ncluster:\n  ${CLUSTERS.existing}\ngvisor:\n  pools: [gvisor]\n`, 'ex.yaml');
    expect(providerFor(ex).secrets()).toEqual({ keyFiles: [], kubeconfigs: ['/nonexistent/kubeconfig'] });
  });

  it('the shipped default config is a provider with a Kubernetes API that can reproduce manifests', () => {
    expect(capabilitiesOf(loadConfig(join(ROOT, 'fixtures/local.yaml')))).toEqual({ kubernetesApi: true, installsNodes: true, cleansUpAfterRun: true, reshapesPools: true });
  });
});
