import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../clusters/index.ts';
import { ConfigError } from '../../harness/errors.ts';
import { parseManifest } from '../../harness/manifests.ts';
import { applyManifest } from '../../clusters/index.ts';

const fx = (f: string) => readFileSync(join(import.meta.dirname, '../../fixtures/manifests', f), 'utf8');
const local = parseConfig(readFileSync(join(import.meta.dirname, '../../fixtures/local.yaml'), 'utf8'), 'local.yaml');

function errorOf(text: string): ConfigError {
  try {
    parseManifest(text, 'm.yaml');
  } catch (e) {
    return e as ConfigError;
  }
  throw new Error('no error');
}

describe('ContainerRuntime', () => {
  it('gives the pool, binary path and flags', () => {
    expect(parseManifest(fx('containerruntime.yaml'), 'cr.yaml')).toEqual({
      source: 'cr.yaml',
      pools: ['gvisor'],
      allPools: ['gvisor'],
      binaryPath: '/var/bin/containerruntimes',
      configFlags: { 'net-raw': 'true' },
    });
  });

  it('rejects another type, naming the field', () => {
    const e = errorOf(fx('containerruntime.yaml').replace('type: gvisor', 'type: kata'));
    expect(e.message).toBe('m.yaml: spec.type: only type "gvisor" is handled');
  });

  it('rejects a relative binaryPath and a wrong providerConfig kind', () => {
    expect(errorOf(fx('containerruntime.yaml').replace('binaryPath: /var/bin/containerruntimes', 'binaryPath: bin')).message).toContain('spec.binaryPath');
    expect(errorOf(fx('containerruntime.yaml').replace('kind: GVisorConfiguration', 'kind: KataConfiguration')).message).toContain('spec.providerConfig.kind');
  });
});

describe('Shoot', () => {
  it('gives the gVisor workers as pools and all workers as the cluster', () => {
    const s = parseManifest(fx('shoot.yaml'), 'shoot.yaml');
    expect(s.pools).toEqual(['sandboxed']);
    expect(s.allPools).toEqual(['sandboxed', 'default']);
    expect(s.configFlags).toEqual({ 'net-raw': 'false', debug: 'true' });
  });

  it('a Shoot without a gVisor runtime is an error', () => {
    const t = fx('shoot.yaml').replace('- type: gvisor', '- type: kata');
    expect(errorOf(t).message).toBe('m.yaml: spec.provider.workers: no worker has a containerRuntimes entry of type "gvisor"');
  });

  it('a gVisor worker on another CRI is an error', () => {
    const t = fx('shoot.yaml').replace('name: containerd\n          containerRuntimes', 'name: docker\n          containerRuntimes');
    expect(errorOf(t).message).toBe('m.yaml: spec.provider.workers[0].cri.name: gVisor needs cri.name "containerd", got "docker"');
  });

  it('a Shoot without workers is an error', () => {
    expect(errorOf('apiVersion: core.gardener.cloud/v1beta1\nkind: Shoot\nspec:\n  provider:\n    workers: []\n').message).toContain('spec.provider.workers');
  });
});

describe('anything else', () => {
  it('an unknown kind, broken YAML, an empty file', () => {
    expect(errorOf('kind: Deployment\n').message).toBe('m.yaml: kind: expected "ContainerRuntime" or "Shoot", got "Deployment"');
    expect(errorOf('kind: [\n').message).toMatch(/^m\.yaml: line \d+/);
    expect(errorOf('').message).toContain('m.yaml');
  });
});

describe('applyManifest', () => {
  it('a Shoot shapes the local cluster: its workers become host pools, gVisor on the right one', () => {
    const c = applyManifest(local, parseManifest(fx('shoot.yaml'), 'shoot.yaml'));
    expect(c.gvisor.pools).toEqual(['sandboxed']);
    expect(c.gvisor.configFlags).toEqual({ 'net-raw': 'false', debug: 'true' });
    if (c.cluster.provider !== 'local') throw new Error('expected local');
    expect(c.cluster.pools.map((p) => [p.name, p.kind])).toEqual([
      ['sandboxed', 'host'],
      ['default', 'host'],
      ['systemd', 'systemd'],
    ]);
  });

  it('a ContainerRuntime adds a plain pool so scheduling can be tested', () => {
    const c = applyManifest(local, parseManifest(fx('containerruntime.yaml'), 'cr.yaml'));
    if (c.cluster.provider !== 'local') throw new Error('expected local');
    expect(c.cluster.pools.map((p) => p.name)).toEqual(['gvisor', 'plain', 'systemd']);
    expect(c.gvisor.configFlags).toEqual({ 'net-raw': 'true' });
  });

  it('with your own nodes, the manifest pool must exist', () => {
    const nodes = parseConfig(
      JSON.stringify({ apiVersion: 'gvisor-e2e.dev/v1alpha1', kind: 'Config', cluster: { provider: 'nodes', nodes: [{ name: 'a', pool: 'p1', access: { type: 'local' } }] }, gvisor: { pools: ['p1'] } }),
      'n.yaml',
    );
    expect(() => applyManifest(nodes, parseManifest(fx('containerruntime.yaml'), 'cr.yaml'))).toThrow('cr.yaml: workerPool: no node of the config is in pool(s) gvisor');
  });
});

describe('cluster.kubernetesBinDir', () => {
  it('names the missing binary', async () => {
    const { kubeBinariesFromDir } = await import('../../clusters/kube/build.ts');
    expect(() => kubeBinariesFromDir('/nonexistent')).toThrow('cluster.kubernetesBinDir: /nonexistent/kube-apiserver is missing or not executable');
  });
});
