// The conformance spec (suites/spec): each rule on its own, then cross-checked against the installer's rendering, and shown to reject a wrong rule.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { type Config, type NodeConfig } from '../../harness/config.ts';
import { type LoadedConfig, parseConfig } from '../../clusters/index.ts';
import { INSTALL_RULES, type InstallRules } from '../../harness/installer.ts';
import { osFamilyFromOsRelease, renderLimitNofileDropIn, renderRunscToml } from '../../harness/render.ts';
import { cite, expectedNetRaw, gardener, imageBuilder, nodeOsFamily, parseTomlFile, runscConfigOf, runtimeTable, type Toml } from '../../suites/spec/index.ts';

const FIX = join(import.meta.dirname, 'fixtures');
const osRelease = (name: string) => readFileSync(join(FIX, 'os-release', name), 'utf8');
const ORIGINALS: Record<string, string> = {
  'v1 (no version key)': '# containerd 1.x default\n',
  'v2 kind node': readFileSync(join(FIX, 'kind-node-containerd-v2.toml'), 'utf8'),
  'v2 image-builder': readFileSync(join(FIX, 'containerd-image-builder-v2.toml'), 'utf8'),
  'v2 without runtimes': readFileSync(join(FIX, 'containerd-v2-no-runtimes.toml'), 'utf8'),
  'v3 containerd 2.x': readFileSync(join(FIX, 'containerd-2x-v3.toml'), 'utf8'),
};

describe('the Gardener profile', () => {
  it('reads the config version: absent means 1; anything but 1, 2, 3 is unsupported', () => {
    expect(gardener.configVersion({})).toBe(1);
    expect(gardener.configVersion({ version: 2 })).toBe(2);
    expect(gardener.configVersion({ version: 3 })).toBe(3);
    expect(gardener.configVersion({ version: 4 })).toBeUndefined();
    expect(gardener.configVersion.source).toContain('gardener-extension-runtime-gvisor charts/internal/gvisor-installation/templates/configmap-containerd.yaml');
  });

  it('puts the runtime table where each config version keeps it', () => {
    expect(gardener.runtimeTablePath(1)).toEqual(['plugins', 'cri', 'containerd', 'runtimes']);
    expect(gardener.runtimeTablePath(2)).toEqual(['plugins', 'io.containerd.grpc.v1.cri', 'containerd', 'runtimes']);
    expect(gardener.runtimeTablePath(3)).toEqual(['plugins', 'io.containerd.cri.v1.runtime', 'containerd', 'runtimes']);
    expect(runtimeTable({ version: 3, plugins: { 'io.containerd.cri.v1.runtime': { containerd: { runtimes: { runsc: { runtime_type: 'x' } } } } } }, 'runsc')).toEqual({
      version: 3,
      path: 'plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runsc',
      entry: { runtime_type: 'x' },
    });
    // A v2 table in a v3 file is not where containerd 2.x looks.
    expect(runtimeTable({ version: 3, plugins: { 'io.containerd.grpc.v1.cri': { containerd: { runtimes: { runsc: {} } } } } }, 'runsc').entry).toBeUndefined();
  });

  it('expects the runsc shim entry with TypeUrl/ConfigPath, or runc-v2 with BinaryName (the harness own choice)', () => {
    expect(gardener.runtimeEntry({ shim: 'runsc', binaryPath: '/var/bin/containerruntimes', runscConfigPath: '/etc/containerd/runsc.toml' })).toEqual({
      runtime_type: 'io.containerd.runsc.v1',
      options: { TypeUrl: 'io.containerd.runsc.v1.options', ConfigPath: '/etc/containerd/runsc.toml' },
      source: gardener.runtimeEntry.source,
    });
    const runc = gardener.runtimeEntry({ shim: 'runc-v2', binaryPath: '/usr/local/bin', runscConfigPath: '/x' });
    expect(runc).toMatchObject({ runtime_type: 'io.containerd.runc.v2', options: { BinaryName: '/usr/local/bin/runsc' } });
    expect(runc.source).toBe(gardener.HARNESS_CHOICE);
  });

  it('honours only net-raw "true"/"false" (default "false"); debug and nvproxy stay off', () => {
    expect(gardener.runscFlags({})).toEqual({ 'net-raw': 'false', debug: 'false', nvproxy: 'false' });
    expect(gardener.runscFlags({ 'net-raw': 'true' })['net-raw']).toBe('true');
    expect(gardener.runscFlags({ 'net-raw': 'yes' })['net-raw']).toBe('false');
    expect(gardener.runscFlags({ 'net-raw': 'false', debug: 'true', nvproxy: 'true', platform: 'kvm' })).toEqual({ 'net-raw': 'false', debug: 'false', nvproxy: 'false' });
    expect(gardener.runscFlags.source).toBe('gardener-extension-runtime-gvisor pkg/charts/values.go');
  });

  it('puts both binaries in binaryPath, gVisor only on its pools, and a RuntimeClass scheduled by the pool label', () => {
    expect(gardener.binaries('/var/bin/containerruntimes')).toEqual({ runsc: '/var/bin/containerruntimes/runsc', shim: '/var/bin/containerruntimes/containerd-shim-runsc-v1' });
    expect(gardener.gvisorOnPool(['gvisor'], 'gvisor')).toBe(true);
    expect(gardener.gvisorOnPool(['gvisor'], 'default')).toBe(false);
    expect(gardener.runtimeClass('gvisor', 'runsc')).toEqual({ name: 'gvisor', handler: 'runsc', scheduling: { nodeSelector: { 'containerruntime.worker.gardener.cloud/gvisor': 'true' } } });
    expect(gardener.runtimeClass.source).toContain('charts/internal/gvisor/templates/runtimeclass-gvisor.yaml');
  });

  it('counts dmesg lines naming gVisor as the integration test does (grep -i -c gVisor): exactly 1', () => {
    const dmesg = '[0.0] Starting gVisor...\n[0.5] Digging up root...\n[1.0] Ready!\n';
    expect(gardener.dmesgGVisorLines(dmesg)).toEqual({ count: 1, expected: 1 });
    expect(gardener.dmesgGVisorLines(`${dmesg}[2.0] gvisor again\n`).count).toBe(2);
  });
});

describe('the image-builder profile', () => {
  it('reads the OS family from os-release itself', () => {
    expect(imageBuilder.osFamilyOf(osRelease('flatcar'))).toBe('flatcar');
    expect(imageBuilder.osFamilyOf(osRelease('azurelinux-3'))).toBe('azurelinux');
    expect(imageBuilder.osFamilyOf(osRelease('cbl-mariner-2'))).toBe('mariner');
    expect(imageBuilder.osFamilyOf(osRelease('debian-12'))).toBe('debian');
    expect(imageBuilder.osFamilyOf(osRelease('ubuntu-24.04'))).toBe('ubuntu');
    expect(imageBuilder.osFamilyOf('')).toBe('other');
    expect(nodeOsFamily('flatcar', osRelease('debian-12'))).toBe('flatcar');
    expect(nodeOsFamily('auto', osRelease('debian-12'))).toBe('debian');
  });

  it('wants the LimitNOFILE drop-in on Flatcar, Azure Linux and Mariner, elsewhere only on opt-in', () => {
    for (const f of ['flatcar', 'azurelinux', 'mariner']) expect(imageBuilder.limitNofileDropIn(f, false)).toBe(true);
    for (const f of ['debian', 'ubuntu', 'rocky', 'other']) {
      expect(imageBuilder.limitNofileDropIn(f, false)).toBe(false);
      expect(imageBuilder.limitNofileDropIn(f, true)).toBe(true);
    }
    expect(imageBuilder.limitNofileFile('/etc/systemd/system')).toEqual({ path: '/etc/systemd/system/containerd.service.d/limit-nofile.conf', section: 'Service', limitNofile: 1048576 });
    expect(cite(imageBuilder.limitNofileDropIn)).toMatch(/^ \[rule: image-builder docs\/book\/src\/capi\/containerd\/customizing-containerd\.md .*images\/capi\/ansible\/roles\/containerd\/tasks\/main\.yml/);
  });

  it('places image_pull_progress_timeout per config version; the additional settings hold as a document of their own', () => {
    expect(imageBuilder.imagePullProgressTimeoutPath(1)).toBeUndefined();
    expect(imageBuilder.imagePullProgressTimeoutPath(2)).toEqual(['plugins', 'io.containerd.grpc.v1.cri', 'image_pull_progress_timeout']);
    expect(imageBuilder.imagePullProgressTimeoutPath(3)).toEqual(['plugins', 'io.containerd.cri.v1.images', 'image_pull_progress_timeout']);
    const t = (x: string) => parseTomlFile(x, 'f', 'n');
    // The settings' headerless keys are top-level keys, whatever table config.toml ends with.
    expect(imageBuilder.additionalSettingsApplied(t('a = 1\n[debug]\n  level = "info"\n'), t('[debug]\n  level = "info"'))).toEqual([]);
    expect(imageBuilder.additionalSettingsApplied(t('[x]\nSystemdCgroup = false\n'), t('SystemdCgroup = false\n'))).toEqual(['SystemdCgroup']);
    expect(imageBuilder.additionalSettingsApplied(t('[debug]\n  level = "warn"\n'), t('[debug]\n  level = "info"'))).toEqual(['debug.level']);
    expect(imageBuilder.additionalSettingsApplied(t('anything = 1'), t(''))).toEqual([]);
  });

  it('reads the sandbox boot log: "Starting gVisor..." … "Ready!"', () => {
    expect(imageBuilder.sandboxBootLog('[0] Starting gVisor...\n[1] Ready!\n')).toMatchObject({ starts: true, ready: true });
    expect(imageBuilder.sandboxBootLog('[0] Linux version 6.1\n')).toMatchObject({ starts: false, ready: false });
    expect(imageBuilder.layout()).toEqual({ handler: 'gvisor', runtimeClassName: 'gvisor', binaryPath: '/usr/local/bin' });
  });
});

// ---- The installer's rendering against the spec ----------------------------------------------

function config(gvisor: object, containerd: object): LoadedConfig {
  return parseConfig(
    JSON.stringify({
      apiVersion: 'gvisor-e2e.dev/v1alpha1',
      kind: 'Config',
      cluster: {
        provider: 'nodes',
        nodes: ['gvisor', 'default'].map((pool) => ({ name: `${pool}-1`, pool, access: { type: 'local' } })),
      },
      gvisor: { pools: ['gvisor'], ...gvisor },
      containerd,
    }),
    'spec test',
  );
}

interface NodeFiles {
  configToml: string;
  runscToml?: string;
  dropIn?: string;
}

/** What installNode writes on a node, composed from the same rules and renderers (no node needed). */
function installerFiles(rules: InstallRules, cfg: Config, n: NodeConfig, original: string, osReleaseText: string): NodeFiles {
  const g = cfg.gvisor;
  const inPool = rules.gvisorNode(cfg, n);
  const configToml = rules.containerdConfig(original, {
    gvisor: inPool,
    handler: g.handler,
    binaryPath: g.binaryPath,
    shim: g.shim,
    runscConfigPath: n.paths.runscConfig,
    imagePullProgressTimeout: cfg.containerd.imagePullProgressTimeout,
    additionalSettings: cfg.containerd.additionalSettings,
  });
  return {
    configToml,
    runscToml: inPool ? renderRunscToml(rules.runscFlags(g.configFlags)) : undefined,
    dropIn: rules.limitNofileDropIn(osFamilyFromOsRelease(osReleaseText), cfg.containerd.enableLimitNoFile) ? renderLimitNofileDropIn() : undefined,
  };
}

/** The spec's verdict on a node's files: every violated expectation, with its source. */
function specViolations(cfg: Config, n: NodeConfig, files: NodeFiles, osReleaseText: string): string[] {
  const out: string[] = [];
  const expect = (ok: boolean, what: string, r: { source: string }) => {
    if (!ok) out.push(`${what}${cite(r)}`);
  };
  const g = cfg.gvisor;
  const doc = parseTomlFile(files.configToml, 'config.toml', n.name);
  const rt = runtimeTable(doc, g.handler);
  const onPool = gardener.gvisorOnPool(g.pools, n.pool);
  if (onPool) {
    const want = gardener.runtimeEntry({ shim: g.shim, binaryPath: g.binaryPath, runscConfigPath: n.paths.runscConfig });
    expect(rt.entry !== undefined, `no runtime table at ${rt.path}`, gardener.runtimeTablePath);
    expect(rt.entry?.runtime_type === want.runtime_type, `runtime_type ${String(rt.entry?.runtime_type)}, expected ${want.runtime_type}`, want);
    for (const [k, v] of Object.entries(want.options)) expect((rt.entry?.options as Toml | undefined)?.[k] === v, `options.${k}, expected ${v}`, want);
    if (g.shim === 'runsc') {
      const flags = gardener.runscFlags(g.configFlags);
      const found = files.runscToml ? runscConfigOf(parseTomlFile(files.runscToml, 'runsc.toml', n.name)) : {};
      expect(found['net-raw'] === flags['net-raw'], `net-raw = "${found['net-raw']}", expected "${flags['net-raw']}"`, gardener.runscFlags);
      for (const k of ['debug', 'nvproxy'] as const) expect((found[k] ?? 'false') === flags[k], `${k} = "${found[k]}"`, gardener.runscFlags);
    }
  } else {
    expect(rt.entry === undefined && files.runscToml === undefined, `gVisor on ${n.name} outside the pools`, gardener.gvisorOnPool);
  }
  const wantDropIn = imageBuilder.limitNofileDropIn(nodeOsFamily(n.osFamily, osReleaseText), cfg.containerd.enableLimitNoFile);
  expect(wantDropIn === (files.dropIn !== undefined), `drop-in ${files.dropIn ? 'present' : 'missing'}`, imageBuilder.limitNofileDropIn);
  if (files.dropIn) expect(new RegExp(`^LimitNOFILE=${imageBuilder.LIMIT_NOFILE}$`, 'm').test(files.dropIn), 'LimitNOFILE value', imageBuilder.limitNofileFile);
  const version = gardener.configVersion(doc);
  if (cfg.containerd.imagePullProgressTimeout && version) {
    expect(imageBuilder.imagePullProgressTimeoutIn(doc, version) === cfg.containerd.imagePullProgressTimeout, 'image_pull_progress_timeout', imageBuilder.imagePullProgressTimeoutPath);
  }
  if (cfg.containerd.additionalSettings) {
    const missing = imageBuilder.additionalSettingsApplied(doc, parseTomlFile(cfg.containerd.additionalSettings, 'settings', n.name));
    expect(missing.length === 0, `additional settings missing at ${missing.join(', ')}`, imageBuilder.additionalSettingsApplied);
  }
  return out;
}

const GOOD_CASES: { name: string; gvisor: object; containerd: object; originals: string[]; os: string[] }[] = [
  { name: 'Gardener defaults', gvisor: {}, containerd: {}, originals: Object.keys(ORIGINALS), os: ['debian-12', 'flatcar', 'azurelinux-3', 'cbl-mariner-2', 'ubuntu-24.04'] },
  { name: 'net-raw "true", an ignored flag', gvisor: { configFlags: { 'net-raw': 'true', debug: 'true' } }, containerd: { enableLimitNoFile: true }, originals: Object.keys(ORIGINALS), os: ['debian-12', 'rocky-9'] },
  { name: 'image-builder layout, runc-v2 shim', gvisor: { handler: 'gvisor', binaryPath: '/usr/local/bin', shim: 'runc-v2' }, containerd: {}, originals: Object.keys(ORIGINALS), os: ['ubuntu-24.04', 'flatcar'] },
  {
    name: 'image-builder customizations',
    gvisor: { handler: 'gvisor' },
    containerd: { imagePullProgressTimeout: '5m0s', additionalSettings: '[debug]\n  level = "info"\n', enableLimitNoFile: true },
    originals: ['v2 kind node', 'v2 image-builder', 'v2 without runtimes', 'v3 containerd 2.x'],
    os: ['debian-12'],
  },
];

describe('the installer and the spec agree on every good case', () => {
  for (const c of GOOD_CASES) {
    it(c.name, () => {
      const cfg = config(c.gvisor, c.containerd);
      for (const n of cfg.cluster.provider === 'nodes' ? cfg.cluster.nodes : []) {
        for (const o of c.originals) {
          for (const os of c.os) {
            const files = installerFiles(INSTALL_RULES, cfg, n, ORIGINALS[o]!, osRelease(os));
            expect(specViolations(cfg, n, files, osRelease(os)), `${n.name}, ${o}, ${os}`).toEqual([]);
          }
        }
      }
      expect(expectedNetRaw(cfg)).toBe(INSTALL_RULES.runscFlags(cfg.gvisor.configFlags)['net-raw']);
    });
  }
});

describe('a wrong installer rule produces files the spec rejects, naming the rule', () => {
  const nodesOf = (cfg: LoadedConfig) => (cfg.cluster.provider === 'nodes' ? cfg.cluster.nodes : []);

  it('a drop-in rule that forgets Flatcar', () => {
    const wrong: InstallRules = { ...INSTALL_RULES, limitNofileDropIn: (f, e) => e || f === 'azurelinux' || f === 'mariner' };
    const cfg = config({}, {});
    const n = nodesOf(cfg)[0]!;
    const files = installerFiles(wrong, cfg, n, ORIGINALS['v2 kind node']!, osRelease('flatcar'));
    expect(specViolations(cfg, n, files, osRelease('flatcar'))).toEqual([`drop-in missing${cite(imageBuilder.limitNofileDropIn)}`]);
  });

  it('a drop-in rule that ignores containerd.enableLimitNoFile', () => {
    const wrong: InstallRules = { ...INSTALL_RULES, limitNofileDropIn: (f) => ['flatcar', 'azurelinux', 'mariner'].includes(f) };
    const cfg = config({}, { enableLimitNoFile: true });
    const n = nodesOf(cfg)[1]!;
    expect(specViolations(cfg, n, installerFiles(wrong, cfg, n, ORIGINALS['v3 containerd 2.x']!, osRelease('debian-12')), osRelease('debian-12'))).toEqual([
      `drop-in missing${cite(imageBuilder.limitNofileDropIn)}`,
    ]);
  });

  it('a runscFlags rule that flips net-raw', () => {
    const wrong: InstallRules = { ...INSTALL_RULES, runscFlags: (f) => ({ 'net-raw': f['net-raw'] === 'true' ? 'false' : 'true' }) };
    for (const netRaw of ['true', 'false']) {
      const cfg = config({ configFlags: { 'net-raw': netRaw } }, {});
      const n = nodesOf(cfg)[0]!;
      const other = netRaw === 'true' ? 'false' : 'true';
      expect(specViolations(cfg, n, installerFiles(wrong, cfg, n, ORIGINALS['v2 kind node']!, osRelease('debian-12')), osRelease('debian-12'))).toEqual([
        `net-raw = "${other}", expected "${netRaw}"${cite(gardener.runscFlags)}`,
      ]);
    }
  });

  it('a runscFlags rule that honours any value of net-raw', () => {
    const wrong: InstallRules = { ...INSTALL_RULES, runscFlags: (f) => ({ 'net-raw': (f['net-raw'] ?? 'false') as 'true' | 'false' }) };
    const cfg = config({ configFlags: { 'net-raw': 'maybe' } }, {});
    const n = nodesOf(cfg)[0]!;
    expect(specViolations(cfg, n, installerFiles(wrong, cfg, n, ORIGINALS['v2 kind node']!, osRelease('debian-12')), osRelease('debian-12'))).toEqual([
      `net-raw = "maybe", expected "false"${cite(gardener.runscFlags)}`,
    ]);
  });

  it('a config renderer that writes the version-2 table into a version-3 config', () => {
    const wrong: InstallRules = {
      ...INSTALL_RULES,
      containerdConfig: (original, o) => INSTALL_RULES.containerdConfig(original.replace(/^version = 3$/m, 'version = 2'), o).replace(/^version = 2$/m, 'version = 3'),
    };
    const cfg = config({}, {});
    const n = nodesOf(cfg)[0]!;
    const v = specViolations(cfg, n, installerFiles(wrong, cfg, n, ORIGINALS['v3 containerd 2.x']!, osRelease('debian-12')), osRelease('debian-12'));
    expect(v[0]).toBe(`no runtime table at plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runsc${cite(gardener.runtimeTablePath)}`);
  });

  it('a pool rule that puts gVisor on every node', () => {
    const wrong: InstallRules = { ...INSTALL_RULES, gvisorNode: () => true };
    const cfg = config({}, {});
    const n = nodesOf(cfg)[1]!;
    expect(specViolations(cfg, n, installerFiles(wrong, cfg, n, ORIGINALS['v2 kind node']!, osRelease('debian-12')), osRelease('debian-12'))).toEqual([
      `gVisor on default-1 outside the pools${cite(gardener.gvisorOnPool)}`,
    ]);
  });
});

describe('the spec is an independent statement', () => {
  it('imports neither the installer, nor its renderer, nor the config resolver', () => {
    const dir = join(import.meta.dirname, '../../suites/spec');
    for (const f of ['index.ts', 'gardener.ts', 'image-builder.ts', 'rule.ts']) {
      const imports = [...readFileSync(join(dir, f), 'utf8').matchAll(/^import .* from '([^']+)';$/gm)].map((m) => m[1]);
      expect(imports.filter((i) => i?.includes('harness/')), f).toEqual([]);
    }
  });

  it('no suite uses render.ts or installer.ts', () => {
    const root = join(import.meta.dirname, '../..');
    for (const s of ['limit-nofile', 'net-raw', 'runsc-installation', 'runtimeclass-scheduling', 'sandbox-dmesg']) {
      const text = readFileSync(join(root, 'suites', s, `${s}.suite.ts`), 'utf8');
      expect(text, s).not.toMatch(/harness\/(render|installer)\.ts/);
    }
    expect(readFileSync(join(root, 'harness/suite.ts'), 'utf8')).not.toMatch(/from '\.\/(render|installer)\.ts'|effectiveRunscFlags/);
  });
});
