import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { durationMs, effectiveRunscFlags, SUITE_NAMES, type Config } from '../../harness/config.ts';
import { loadConfig, parseConfig } from '../../clusters/index.ts';
import { selectSuites } from '../../bin/app.ts';
import { ConfigError } from '../../harness/errors.ts';

const FP = `SHA256:${'A'.repeat(43)}`;

const NODES_MIN = `
apiVersion: gvisor-e2e.dev/v1alpha1
kind: Config
cluster:
  provider: nodes
  nodes:
    - name: worker-1
      pool: gvisor
      access:
        type: ssh
        host: 10.0.0.5
        privateKeyPath: keys/id_ed25519
        knownHostsPath: keys/known_hosts
gvisor:
  pools: [gvisor]
`;

const LOCAL_MIN = `
apiVersion: gvisor-e2e.dev/v1alpha1
kind: Config
cluster:
  provider: local
  pools:
    - name: gvisor
gvisor:
  pools: [gvisor]
`;

/** A nodes config with the given YAML for the first node's access and extra node entries. */
function nodesConfig(opts: { access?: string; extraNodes?: string; gvisor?: string; containerd?: string; top?: string } = {}): string {
  return `apiVersion: gvisor-e2e.dev/v1alpha1
kind: Config
cluster:
  provider: nodes
  nodes:
    - name: worker-1
      pool: gvisor
      access:
${opts.access ?? '        type: local'}
${opts.extraNodes ?? ''}
gvisor:
${opts.gvisor ?? '  pools: [gvisor]'}
${opts.containerd ?? ''}
${opts.top ?? ''}
`;
}

/** Runs fn, expects a ConfigError and returns it. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error('expected a ConfigError, nothing was thrown');
}

describe('parseConfig: valid configs get their defaults', () => {
  it('a minimal nodes config', () => {
    const c = parseConfig(NODES_MIN, 'nodes.yaml');
    expect(c.cluster.provider).toBe('nodes');
    if (c.cluster.provider !== 'nodes') throw new Error('unreachable');
    expect(c.cluster.name).toBe('gvisor-e2e');
    const n = c.cluster.nodes[0]!;
    expect(n.osFamily).toBe('auto');
    expect(n.labels).toEqual({});
    expect(n.access).toEqual({ type: 'ssh', host: '10.0.0.5', port: 22, user: 'root', privateKeyPath: 'keys/id_ed25519', knownHostsPath: 'keys/known_hosts' });
    expect(n.paths).toEqual({
      containerdConfig: '/etc/containerd/config.toml',
      containerdSocket: '/run/containerd/containerd.sock',
      runscConfig: '/etc/containerd/runsc.toml',
      systemdUnitDir: '/etc/systemd/system',
      podLogDir: '/var/log/gvisor-e2e',
      tmpDir: '/tmp',
    });
    expect(n.containerd.restartCommand).toBe('systemctl daemon-reload && systemctl restart containerd');
    expect(c.gvisor).toEqual({
      pools: ['gvisor'],
      handler: 'runsc',
      runtimeClassName: 'gvisor',
      binaryPath: '/var/bin/containerruntimes',
      version: 'latest',
      source: { type: 'build' },
      shim: 'runsc',
      configFlags: {},
    });
    expect(c.containerd).toEqual({ enableLimitNoFile: false });
    expect(c.suites).toEqual({ skip: [] });
    expect(c.timeouts).toEqual({ command: '60s', container: '60s', containerdRestart: '60s' });
    expect(c.reportsDir).toBe('reports');
  });

  it('a minimal local config', () => {
    const c = parseConfig(LOCAL_MIN, 'local.yaml');
    if (c.cluster.provider !== 'local') throw new Error(`provider ${c.cluster.provider}`);
    expect(c.cluster.name).toBe('gvisor-e2e');
    expect(c.cluster.stateDir).toBeUndefined();
    expect(c.cluster.pools).toEqual([{ name: 'gvisor', nodes: 1, kind: 'host', osFamily: 'auto' }]);
    expect(c.gvisor.handler).toBe('runsc');
    expect(c.gvisor.binaryPath).toBe('/var/bin/containerruntimes');
    expect(c.gvisor.runtimeClassName).toBe('gvisor');
  });

  it('the shipped fixtures/local.yaml loads', () => {
    const c = loadConfig(join(import.meta.dirname, '../../fixtures/local.yaml'));
    expect(c.cluster.provider).toBe('local');
    expect(c.gvisor.pools.length).toBeGreaterThan(0);
  });

  it('an ssh node pinned by fingerprint needs no known_hosts', () => {
    const c = parseConfig(
      nodesConfig({ access: `        type: ssh\n        host: node.example\n        port: 2222\n        user: core\n        privateKeyPath: /k\n        hostKeyFingerprint: "${FP}"` }),
      'x.yaml',
    );
    if (c.cluster.provider !== 'nodes') throw new Error('unreachable');
    expect(c.cluster.nodes[0]!.access).toMatchObject({ port: 2222, user: 'core', hostKeyFingerprint: FP });
  });

  it('image-builder settings are kept', () => {
    const c = parseConfig(
      nodesConfig({
        gvisor: '  pools: [gvisor]\n  handler: gvisor\n  binaryPath: /usr/local/bin\n  shim: runc-v2\n  configFlags:\n    net-raw: "true"',
        containerd: 'containerd:\n  imagePullProgressTimeout: 5m0s\n  additionalSettings: |\n    [debug]\n      level = "info"\n  enableLimitNoFile: true',
      }),
      'x.yaml',
    );
    expect(c.gvisor).toMatchObject({ handler: 'gvisor', binaryPath: '/usr/local/bin', shim: 'runc-v2', configFlags: { 'net-raw': 'true' } });
    expect(c.containerd).toEqual({ imagePullProgressTimeout: '5m0s', additionalSettings: '[debug]\n  level = "info"\n', enableLimitNoFile: true });
  });

  it('additionalSettings that would undo the install are refused at parse time, naming the field and the key', () => {
    const withSettings = (toml: string) =>
      nodesConfig({ gvisor: '  pools: [gvisor]', containerd: `containerd:\n  additionalSettings: |\n${toml.split('\n').map((l) => `    ${l}`).join('\n')}` });
    expect(configError(() => parseConfig(withSettings('[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runsc]\nruntime_type = "io.containerd.runc.v2"'), 'x.yaml')).message).toBe(
      'x.yaml: containerd.additionalSettings: redefines runtime "runsc" (plugins.io.containerd.cri.v1.runtime.containerd.runtimes.runsc), the gVisor handler the install writes',
    );
    expect(configError(() => parseConfig(withSettings('[plugins."io.containerd.cri.v1.runtime".containerd]\ndefault_runtime_name = "runsc"'), 'x.yaml')).message).toMatch(/^x\.yaml: containerd\.additionalSettings: sets plugins\..*\.default_runtime_name/);
    expect(configError(() => parseConfig(withSettings('[debug'), 'x.yaml')).message).toMatch(/^x\.yaml: containerd\.additionalSettings: is not valid TOML/);
  });
});

describe('parseConfig: errors name the source and the field', () => {
  it('an unknown key in a node (a typo) is rejected', () => {
    const text = NODES_MIN.replace('      access:', '      acess:');
    const e = configError(() => parseConfig(text, 'typo.yaml'));
    expect(e.source).toBe('typo.yaml');
    expect(e.message).toMatch(/^typo\.yaml: /);
    const issue = e.issues.find((i) => i.message.includes('unknown key'));
    expect(issue, e.message).toBeDefined();
    expect(issue!.path).toBe('cluster.nodes[0]');
    expect(issue!.message).toContain('"acess"');
    expect(e.message).toContain('cluster.nodes[0]: unknown key(s) "acess"');
  });

  it('concurrency defaults to 2 suite workers and 8 nodes at once; 0 is rejected at its path', () => {
    expect(parseConfig(NODES_MIN, 'c.yaml').concurrency).toEqual({ suites: 2, nodes: 8 });
    expect(parseConfig(nodesConfig({ top: 'concurrency:\n  nodes: 32' }), 'c.yaml').concurrency).toEqual({ suites: 2, nodes: 32 });
    const e = configError(() => parseConfig(nodesConfig({ top: 'concurrency:\n  nodes: 0' }), 'c.yaml'));
    expect(e.issues.map((i) => i.path)).toContain('concurrency.nodes');
  });

  it('an unknown top-level key and an unknown gvisor key are rejected', () => {
    const e = configError(() => parseConfig(nodesConfig({ gvisor: '  pools: [gvisor]\n  handlr: gvisor', top: 'reportDir: out' }), 'c.yaml'));
    expect(e.message).toContain('gvisor: unknown key(s) "handlr"');
    expect(e.message).toContain('(root): unknown key(s) "reportDir"');
  });

  it('configFlags accepts any key (it is filtered later, with a warning)', () => {
    const c = parseConfig(nodesConfig({ gvisor: '  pools: [gvisor]\n  configFlags:\n    debug: "true"\n    net-raw: "true"' }), 'c.yaml');
    expect(c.gvisor.configFlags).toEqual({ debug: 'true', 'net-raw': 'true' });
  });

  it('a YAML syntax error names a line', () => {
    const text = 'apiVersion: gvisor-e2e.dev/v1alpha1\nkind: Config\ncluster:\n  provider: [nodes\n';
    const e = configError(() => parseConfig(text, 'broken.yaml'));
    expect(e.message).toMatch(/^broken\.yaml: line \d+, column \d+: /);
  });

  it('a duplicate YAML key is an error, with its line', () => {
    const text = 'apiVersion: gvisor-e2e.dev/v1alpha1\nkind: Config\nkind: Config\n';
    const e = configError(() => parseConfig(text, 'dup.yaml'));
    expect(e.issues[0]!.path).toMatch(/^line 3, column \d+$/);
  });

  it('an empty file is rejected at the root', () => {
    const e = configError(() => parseConfig('', 'empty.yaml'));
    expect(e.message).toMatch(/^empty\.yaml: \(root\): /);
  });

  it('ssh access without knownHostsPath or hostKeyFingerprint is rejected', () => {
    const e = configError(() => parseConfig(nodesConfig({ access: '        type: ssh\n        host: h\n        privateKeyPath: /k' }), 'c.yaml'));
    expect(e.issues).toContainEqual({ path: 'cluster.nodes[0].access', message: expect.stringContaining('knownHostsPath or hostKeyFingerprint') });
  });

  it.each(['SHA256:short', `MD5:${'A'.repeat(43)}`, `SHA256:${'A'.repeat(44)}`, `sha256:${'A'.repeat(43)}`, `SHA256:${'A'.repeat(42)}=`])(
    'a bad fingerprint %s is rejected',
    (fp) => {
      const e = configError(() =>
        parseConfig(nodesConfig({ access: `        type: ssh\n        host: h\n        privateKeyPath: /k\n        hostKeyFingerprint: "${fp}"` }), 'c.yaml'),
      );
      expect(e.issues.map((i) => i.path)).toContain('cluster.nodes[0].access.hostKeyFingerprint');
      expect(e.message).toContain('SHA256:<43 base64 chars>');
    },
  );

  it('duplicate node names are rejected', () => {
    const e = configError(() =>
      parseConfig(nodesConfig({ extraNodes: '    - name: worker-1\n      pool: other\n      access:\n        type: local' }), 'c.yaml'),
    );
    expect(e.issues).toContainEqual({ path: 'cluster.nodes[1].name', message: 'duplicate node name "worker-1"' });
  });

  it('gvisor.pools naming a pool no node has is rejected (nodes provider)', () => {
    const e = configError(() => parseConfig(nodesConfig({ gvisor: '  pools: [gvisor, gpu]' }), 'c.yaml'));
    expect(e.issues).toEqual([{ path: 'gvisor.pools[1]', message: expect.stringContaining('no node is in pool "gpu"') }]);
  });

  it('gvisor.pools naming an unknown pool is rejected (local provider)', () => {
    const e = configError(() => parseConfig(LOCAL_MIN.replace('pools: [gvisor]', 'pools: [gvisr]'), 'local.yaml'));
    expect(e.issues).toEqual([{ path: 'gvisor.pools[0]', message: expect.stringContaining('no pool "gvisr"') }]);
  });

  it('a local gVisor pool of kind "systemd" is rejected, pointing at "host"', () => {
    const text = LOCAL_MIN.replace('    - name: gvisor\n', '    - name: gvisor\n      kind: systemd\n');
    const e = configError(() => parseConfig(text, 'local.yaml'));
    expect(e.issues).toHaveLength(1);
    expect(e.issues[0]!.path).toBe('cluster.pools[0].kind');
    expect(e.issues[0]!.message).toContain('"host"');
  });

  it('a local systemd pool without gVisor is fine', () => {
    const text = LOCAL_MIN.replace('    - name: gvisor\n', '    - name: gvisor\n    - name: sd\n      kind: systemd\n');
    const c = parseConfig(text, 'local.yaml');
    if (c.cluster.provider !== 'local') throw new Error('unreachable');
    expect(c.cluster.pools.map((p) => p.kind)).toEqual(['host', 'systemd']);
  });

  it.each(['5 minutes', '1.5m', '5M', 'ms', '5m0'])('an invalid imagePullProgressTimeout %j is rejected', (v) => {
    const e = configError(() => parseConfig(nodesConfig({ containerd: `containerd:\n  imagePullProgressTimeout: "${v}"` }), 'c.yaml'));
    expect(e.issues).toEqual([{ path: 'containerd.imagePullProgressTimeout', message: expect.stringContaining('Go duration') }]);
  });

  it.each(['5m0s', '1h30m', '300s', '500ms'])('a valid imagePullProgressTimeout %j is accepted', (v) => {
    expect(parseConfig(nodesConfig({ containerd: `containerd:\n  imagePullProgressTimeout: "${v}"` }), 'c.yaml').containerd.imagePullProgressTimeout).toBe(v);
  });

  it('a bad timeout duration is rejected with its path', () => {
    const e = configError(() => parseConfig(nodesConfig({ top: 'timeouts:\n  command: 1m30s' }), 'c.yaml'));
    expect(e.issues.map((i) => i.path)).toEqual(['timeouts.command']);
  });

  it('a bad node name, relative path and shim are each reported', () => {
    const text = nodesConfig({ gvisor: '  pools: [gvisor]\n  shim: runc\n  binaryPath: usr/local/bin' }).replace('name: worker-1', 'name: Worker_1');
    const e = configError(() => parseConfig(text, 'c.yaml'));
    expect(e.issues.map((i) => i.path).sort()).toEqual(['cluster.nodes[0].name', 'gvisor.binaryPath', 'gvisor.shim']);
  });
});

describe('loadConfig', () => {
  const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-unit-config-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('resolves relative paths against the file directory', () => {
    const file = join(dir, 'nodes.yaml');
    mkdirSync(join(dir, 'keys'), { recursive: true });
    writeFileSync(join(dir, 'keys/id_ed25519'), '');
    writeFileSync(join(dir, 'keys/known_hosts'), '');
    writeFileSync(file, `${NODES_MIN}  source:\n    type: dir\n    path: bin\n`);
    const c = loadConfig(file);
    if (c.cluster.provider !== 'nodes' || c.cluster.nodes[0]!.access.type !== 'ssh') throw new Error('unreachable');
    expect(c.cluster.nodes[0]!.access.privateKeyPath).toBe(join(dir, 'keys/id_ed25519'));
    expect(c.cluster.nodes[0]!.access.knownHostsPath).toBe(join(dir, 'keys/known_hosts'));
    expect(c.gvisor.source).toEqual({ type: 'dir', path: join(dir, 'bin') });
  });

  it('resolves the local stateDir and leaves absolute paths alone', () => {
    const file = join(dir, 'local.yaml');
    writeFileSync(file, LOCAL_MIN.replace('  provider: local\n', '  provider: local\n  stateDir: state\n'));
    const c = loadConfig(file);
    if (c.cluster.provider !== 'local') throw new Error('unreachable');
    expect(c.cluster.stateDir).toBe(join(dir, 'state'));
    const abs = join(dir, 'abs.yaml');
    const key = join(dir, 'abs-key');
    writeFileSync(key, '');
    writeFileSync(abs, NODES_MIN.replace('keys/id_ed25519', key).replace('keys/known_hosts', key));
    const c2 = loadConfig(abs);
    if (c2.cluster.provider !== 'nodes' || c2.cluster.nodes[0]!.access.type !== 'ssh') throw new Error('unreachable');
    expect(c2.cluster.nodes[0]!.access.privateKeyPath).toBe(key);
  });

  it('a missing file is a ConfigError naming the file', () => {
    const file = join(dir, 'missing.yaml');
    const e = configError(() => loadConfig(file));
    expect(e.message).toBe(`${file}: (root): cannot read the file: ENOENT`);
  });
});

describe('effectiveRunscFlags', () => {
  function run(flags: Record<string, string>) {
    const warnings: string[] = [];
    return { flags: effectiveRunscFlags(flags, (m) => warnings.push(m)), warnings };
  }

  it('defaults to net-raw "false" without warnings', () => {
    expect(run({})).toEqual({ flags: { 'net-raw': 'false' }, warnings: [] });
  });

  it('honours net-raw "true" and "false"', () => {
    expect(run({ 'net-raw': 'true' })).toEqual({ flags: { 'net-raw': 'true' }, warnings: [] });
    expect(run({ 'net-raw': 'false' })).toEqual({ flags: { 'net-raw': 'false' }, warnings: [] });
  });

  it('ignores every other key, naming it in a warning', () => {
    const r = run({ debug: 'true', 'net-raw': 'true', platform: 'kvm' });
    expect(r.flags).toEqual({ 'net-raw': 'true' });
    expect(Object.keys(r.flags)).toEqual(['net-raw']);
    expect(r.warnings).toHaveLength(2);
    expect(r.warnings[0]).toContain('gvisor.configFlags.debug');
    expect(r.warnings[1]).toContain('gvisor.configFlags.platform');
  });

  it.each(['yes', 'True', '1', ''])('net-raw %j warns and stays "false"', (v) => {
    const r = run({ 'net-raw': v });
    expect(r.flags).toEqual({ 'net-raw': 'false' });
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings[0]).toContain('gvisor.configFlags.net-raw');
    expect(r.warnings[0]).toContain(`"${v}"`);
  });
});

describe('selectSuites', () => {
  const base = parseConfig(NODES_MIN, 'c.yaml');
  const withSuites = (suites: Config['suites']): Config => ({ ...base, suites });

  it('by default runs every suite except runtimeclass-scheduling, in canonical order', () => {
    expect(selectSuites(base)).toEqual(['runsc-installation', 'sandbox-dmesg', 'sandbox-basics', 'net-raw', 'limit-nofile']);
    expect(selectSuites(base)).not.toContain('runtimeclass-scheduling');
    expect(SUITE_NAMES).toContain('runtimeclass-scheduling');
  });

  it('--suite picks suites (canonical order, opt-in suites included)', () => {
    expect(selectSuites(base, ['net-raw', 'runtimeclass-scheduling', 'runsc-installation'])).toEqual(['runsc-installation', 'net-raw', 'runtimeclass-scheduling']);
  });

  it('an empty --suite list means the default selection', () => {
    expect(selectSuites(base, [])).toEqual(selectSuites(base));
  });

  it('--skip removes suites', () => {
    expect(selectSuites(base, undefined, ['net-raw', 'sandbox-dmesg'])).toEqual(['runsc-installation', 'sandbox-basics', 'limit-nofile']);
  });

  it('the config include / skip lists apply, and CLI --skip adds to them', () => {
    const c = withSuites({ include: ['net-raw', 'limit-nofile', 'runtimeclass-scheduling'], skip: ['limit-nofile'] });
    expect(selectSuites(c)).toEqual(['net-raw', 'runtimeclass-scheduling']);
    expect(selectSuites(c, undefined, ['net-raw'])).toEqual(['runtimeclass-scheduling']);
    expect(selectSuites(c, ['sandbox-dmesg'])).toEqual(['sandbox-dmesg']);
  });

  it('an unknown suite name is a ConfigError', () => {
    const e1 = configError(() => selectSuites(base, ['netraw']));
    expect(e1.source).toBe('command line');
    expect(e1.message).toContain('unknown suite "netraw"');
    const e2 = configError(() => selectSuites(base, undefined, ['dmesg']));
    expect(e2.message).toContain('unknown suite "dmesg"');
  });

  it('a selection that leaves nothing to run is a ConfigError, not an empty pass', () => {
    const e = configError(() => selectSuites(base, ['net-raw'], ['net-raw']));
    expect(e.message).toBe('command line: --suite/--skip: no suite left to run: selected net-raw, skipped net-raw');
    expect(() => selectSuites(withSuites({ include: ['limit-nofile'], skip: ['limit-nofile'] }))).toThrow('no suite left to run');
  });

  it('unknown suite names in the config file are rejected by the schema', () => {
    const e = configError(() => parseConfig(nodesConfig({ top: 'suites:\n  skip: [netraw]' }), 'c.yaml'));
    expect(e.issues.map((i) => i.path)).toEqual(['suites.skip[0]']);
  });
});

describe('durationMs', () => {
  it.each([
    ['500ms', 500],
    ['30s', 30_000],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['0s', 0],
  ])('%s = %d ms', (d, ms) => {
    expect(durationMs(d)).toBe(ms);
  });

  it.each(['5', '1m30s', '-1s', '1.5s', ''])('rejects %j', (d) => {
    expect(() => durationMs(d)).toThrow(/bad duration/);
  });
});
