import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig, providerFor } from '../../clusters/index.ts';
import { selectSuites } from '../../bin/app.ts';
import { ConfigError } from '../../harness/errors.ts';

// `provider: existing`: a cluster the harness did not create, reached by a kubeconfig.

const EXISTING = (cluster: string, gvisor = '  pools: [gvisor]') => `apiVersion: gvisor-e2e.dev/v1alpha1
kind: Config
cluster:
  provider: existing
${cluster}
gvisor:
${gvisor}
`;

function messageOf(text: string): string {
  try {
    parseConfig(text, 'c.yaml');
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as Error).message;
  }
  throw new Error('no error');
}

describe('provider: existing', () => {
  it('takes a kubeconfig alone: pools default to the gVisor pools, no install, no SSH nodes', () => {
    const c = parseConfig(EXISTING('  kubeconfig: ./shoot.kubeconfig'), 'c.yaml');
    expect(c.cluster).toEqual({ provider: 'existing', name: 'existing', kubeconfig: './shoot.kubeconfig', install: false, nodes: [] });
    // The scheduling suite runs: there is a Kubernetes API.
    expect(selectSuites(c)).toContain('runtimeclass-scheduling');
  });

  it('takes pools with selectors, a context, install and SSH nodes without a pool', () => {
    const c = parseConfig(
      EXISTING(`  kubeconfig: k
  context: shoot--dev--demo
  install: true
  pools:
    - name: gvisor
    - name: plain
      selector: "worker.gardener.cloud/pool=plain,!node-role.kubernetes.io/control-plane"
  nodes:
    - name: gvisor-1
      access: { type: ssh, host: 10.0.0.5, privateKeyPath: id, hostKeyFingerprint: "SHA256:${'A'.repeat(43)}" }`),
      'c.yaml',
    );
    expect(c.cluster.provider === 'existing' && c.cluster.pools).toEqual([{ name: 'gvisor' }, { name: 'plain', selector: 'worker.gardener.cloud/pool=plain,!node-role.kubernetes.io/control-plane' }]);
    expect(c.cluster.provider === 'existing' && c.cluster.nodes[0]!.pool).toBeUndefined();
  });

  it('names the field: missing kubeconfig, bad selector, unknown pool, non-SSH node, unknown key', () => {
    expect(messageOf(EXISTING('  context: x'))).toContain('cluster.kubeconfig:');
    expect(messageOf(EXISTING('  kubeconfig: k\n  pools: [{ name: gvisor, selector: "a in (b)" }]'))).toBe(
      'c.yaml: cluster.pools[0].selector: "a in (b)" is not a label selector like "worker.gardener.cloud/pool=gvisor"',
    );
    expect(messageOf(EXISTING('  kubeconfig: k\n  pools: [{ name: plain }]'))).toBe('c.yaml: gvisor.pools[0]: no pool "gvisor" in cluster.pools (pools: plain)');
    expect(messageOf(EXISTING('  kubeconfig: k\n  nodes: [{ name: n1, access: { type: local } }]'))).toContain('cluster.nodes[0].access.type: expected "ssh"');
    expect(messageOf(EXISTING('  kubeconfig: k\n  nodes: [{ name: n1, pool: other, access: { type: local } }]'))).toContain('cluster.nodes[0].pool: no pool "other" (pools: gvisor)');
    expect(messageOf(EXISTING('  kubeconfig: k\n  token: abc'))).toBe('c.yaml: cluster: unknown key(s) "token"');
  });

  it('access "api" is not for the nodes provider', () => {
    const text = `apiVersion: gvisor-e2e.dev/v1alpha1
kind: Config
cluster:
  provider: nodes
  nodes: [{ name: n1, pool: gvisor, access: { type: api } }]
gvisor: { pools: [gvisor] }
`;
    expect(messageOf(text)).toBe('c.yaml: cluster.nodes[0].access.type: access "api" is only for nodes of an existing cluster');
  });

  it('resolves the kubeconfig and key paths against the config file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-existing-cfg-'));
    const file = join(dir, 'c.yaml');
    writeFileSync(file, EXISTING(`  kubeconfig: sub/kc\n  nodes: [{ name: n1, access: { type: ssh, host: h, privateKeyPath: id, knownHostsPath: kh } }]`));
    // loadConfig checks that key files exist (a missing one is a usage error).
    for (const f of ['id', 'kh']) writeFileSync(join(dir, f), '');
    const c = loadConfig(file);
    expect(c.cluster.provider === 'existing' && [c.cluster.kubeconfig, c.cluster.nodes[0]!.access]).toEqual([
      join(dir, 'sub/kc'),
      { type: 'ssh', host: 'h', port: 22, user: 'root', privateKeyPath: join(dir, 'id'), knownHostsPath: join(dir, 'kh') },
    ]);
  });
});

describe('a manifest applied to an existing cluster', () => {
  it("takes the manifest's pools; named cluster.pools must include them", async () => {
    const { applyManifest } = await import('../../clusters/index.ts');
    const spec = { source: 'cr.yaml', pools: ['sandboxed'], allPools: ['sandboxed'], binaryPath: '/var/bin/containerruntimes', configFlags: { 'net-raw': 'true' } };
    const c = applyManifest(parseConfig(EXISTING('  kubeconfig: k'), 'c.yaml'), spec);
    expect([c.gvisor.pools, c.gvisor.configFlags]).toEqual([['sandboxed'], { 'net-raw': 'true' }]);
    expect(() => applyManifest(parseConfig(EXISTING('  kubeconfig: k\n  pools: [{ name: gvisor }]'), 'c.yaml'), spec)).toThrow('cr.yaml: workerPool: cluster.pools of the config has no pool(s) sandboxed');
  });
});

describe("the config's kubeconfig is a secret", () => {
  it('its credentials are redacted, whether the file is YAML or one line of JSON', async () => {
    const { redact, registerKnownSecrets } = await import('../../harness/redact.ts');
    const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-kc-'));
    const yamlToken = 'yamltoken0123456789abcdef';
    const jsonToken = 'jsontoken0123456789abcdef';
    writeFileSync(join(dir, 'a'), `users:\n- name: u\n  user:\n    token: ${yamlToken}\n`);
    writeFileSync(join(dir, 'b'), JSON.stringify({ users: [{ name: 'u', user: { token: jsonToken, 'client-key-data': 'S0VZREFUQTAxMjM0NTY3' } }] }));
    registerKnownSecrets([], [join(dir, 'a'), join(dir, 'b')]);
    expect(redact(`x ${yamlToken} y ${jsonToken} z S0VZREFUQTAxMjM0NTY3`)).toBe('x [REDACTED] y [REDACTED] z [REDACTED]');
  });
});

describe('the existing provider reads the kubeconfig before it asks the cluster anything', () => {
  const setup = async (kubeconfigText: string, context?: string) => {
    const { ExistingProvider } = await import('../../clusters/existing/index.ts');
    const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-kc-'));
    writeFileSync(join(dir, 'kc'), kubeconfigText);
    const cfg = parseConfig(EXISTING(`  kubeconfig: ${join(dir, 'kc')}\n  stateDir: ${join(dir, 'state')}${context ? `\n  context: ${context}` : ''}`), 'c.yaml');
    return { provider: new ExistingProvider(cfg as never), dir };
  };
  const KC = `apiVersion: v1
kind: Config
clusters: [{ name: c, cluster: { server: "https://127.0.0.1:1" } }]
users: [{ name: u, user: { token: tok-0123456789abcdef } }]
contexts: [{ name: a, context: { cluster: c, user: u } }]
current-context: a
`;

  it('a malformed kubeconfig: an error naming cluster.kubeconfig that does not quote the file', async () => {
    const { provider, dir } = await setup('users: [{ name: u, user: { token: tok-0123456789abcdef } }]\nclusters: [');
    const e = await provider.up().then(() => undefined, (x: Error) => x);
    expect(e).toBeInstanceOf(ConfigError);
    expect(e!.message).toBe(`config: cluster.kubeconfig: ${join(dir, 'kc')} is not a valid kubeconfig`);
  });

  it('a context it lacks: an error naming cluster.context and the contexts there are', async () => {
    const { provider, dir } = await setup(KC, 'b');
    await expect(provider.up()).rejects.toThrow(`config: cluster.context: no context "b" in ${join(dir, 'kc')} (contexts: a)`);
  });

  it('with a context, the harness uses a 0600 copy in the state dir whose current-context is that one', async () => {
    const { provider, dir } = await setup(KC.replace('contexts: [', 'contexts: [{ name: z, context: { cluster: c, user: u } }, ').replace('current-context: a', 'current-context: z'), 'a');
    const path = provider.kubeconfig();
    expect(path).toBe(join(dir, 'state', 'kubeconfig'));
    const { statSync, readFileSync } = await import('node:fs');
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(path, 'utf8'))['current-context']).toBe('a');
  });

  it("keys the default state dir by the cluster (server and context), and refuses another cluster's record", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-unit-existing-'));
    const kc = (server: string) => {
      const f = join(dir, `${server.replace(/\W/g, '_')}.kubeconfig`);
      writeFileSync(f, `apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nclusters:\n- name: k\n  cluster: {server: "${server}"}\nusers:\n- name: u\n  user: {token: t0ken-value-for-test}\n`);
      return f;
    };
    const a = providerFor(parseConfig(EXISTING(`  kubeconfig: ${kc('https://a.example:6443')}`), 'a.yaml'));
    const b = providerFor(parseConfig(EXISTING(`  kubeconfig: ${kc('https://b.example:6443')}`), 'b.yaml'));
    // Both keep the default name "existing": their records must not be the same directory.
    expect(a.info().stateDir).toMatch(/\/existing-[0-9a-f]{10}$/);
    expect(a.info().stateDir).not.toBe(b.info().stateDir);
    // Pointed at the same stateDir, b refuses a's record, naming both clusters, before touching anything.
    const shared = join(dir, 'shared');
    const at = (server: string, file: string) => providerFor(parseConfig(EXISTING(`  kubeconfig: ${kc(server)}\n  stateDir: ${shared}`), file));
    at('https://a.example:6443', 'a.yaml').recordRun('run-of-a');
    await expect(at('https://b.example:6443', 'b.yaml').down()).rejects.toThrow(
      `${shared} records cluster https://a.example:6443 (context "c"), but this config points at https://b.example:6443 (context "c")`,
    );
    rmSync(dir, { recursive: true, force: true });
  });
});
