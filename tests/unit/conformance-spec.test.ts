// The conformance-depth spec rules (issue 14) as pure functions, and the installer's image-builder parity files cross-checked against them.
import { parse } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import { INSTALL_RULES } from '../../harness/installer.ts';
import { imageBuilderImports, imageBuilderUnitDropIns, renderContainerdConfig } from '../../harness/render.ts';
import { parseConfig } from '../../clusters/index.ts';
import { chooseSuites, SUITE_NEEDS } from '../../harness/config.ts';
import { gardener, gvisor, imageBuilder, kubernetes, type Toml } from '../../suites/spec/index.ts';

const v3 = (body: string) => parse(`version = 3\n${body}`) as Toml;

describe('gardener: where the runtime table is, and what runsc.toml may hold', () => {
  it('names the table of another config version (google/gvisor#13985)', () => {
    const doc = v3('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc]\nruntime_type = "io.containerd.runsc.v1"\n');
    expect(gardener.misplacedRuntimeTable(doc, 'runsc', 3)).toEqual(['plugins', 'io.containerd.grpc.v1.cri', 'containerd', 'runtimes', 'runsc']);
    expect(gardener.misplacedRuntimeTable(doc, 'gvisor', 3)).toBeUndefined();
    // In the right place, nothing is misplaced.
    const right = v3('[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runsc]\nruntime_type = "io.containerd.runsc.v1"\n');
    expect(gardener.misplacedRuntimeTable(right, 'runsc', 3)).toBeUndefined();
    expect(gardener.misplacedRuntimeTable.source).toContain('google/gvisor#13985');
  });

  it('runsc.toml: only [runsc_config] with net-raw, debug, nvproxy, plus keys a harness documents', () => {
    const ok = parse('[runsc_config]\n  net-raw = "false"\n  debug = "false"\n  nvproxy = "false"\n') as Toml;
    expect(gardener.unexpectedRunscKeys(ok)).toEqual([]);
    const odd = parse('binary_name = "/x"\n[runsc_config]\n  net-raw = "true"\n  platform = "ptrace"\n  systemd-cgroup = "true"\n') as Toml;
    expect(gardener.unexpectedRunscKeys(odd)).toEqual(['binary_name', 'runsc_config.platform', 'runsc_config.systemd-cgroup']);
    expect(gardener.unexpectedRunscKeys(odd, ['systemd-cgroup'])).toEqual(['binary_name', 'runsc_config.platform']);
    expect(gardener.runscTomlKeys().runscConfig).toEqual(['net-raw', 'debug', 'nvproxy', 'sidecar-usage-policy', 'sidecar-release-enforcement-policy', ...gardener.HARNESS_RUNSC_KEYS]);
    expect(gardener.unexpectedRunscKeys(parse('[runsc_config]\n  sidecar-usage-policy = "STRICT"\n') as Toml)).toEqual([]);
  });
});

describe('gvisor: the version runsc reports, and the shim', () => {
  const build = { configured: 'latest', source: 'build' as const, pinned: 'v0.0.0-20260905035102-160fafc42237' };
  it.each([
    ['release-20260914.0', { configured: '20260914', source: 'release' as const, pinned: 'release-20260914' }, true],
    ['release-20260914', { configured: '20260914', source: 'release' as const, pinned: '' }, true],
    ['release-20260915.0', { configured: '20260914', source: 'release' as const, pinned: '' }, false],
    ['release-20260914.1', { configured: '20260914.0', source: 'release' as const, pinned: '' }, false],
    ['release-20260914.0', { configured: 'latest', source: 'release' as const, pinned: '' }, true],
    ['v0.0.0-20260905035102-160fafc42237', { configured: 'latest', source: 'release' as const, pinned: '' }, false],
    ['v0.0.0-20260905035102-160fafc42237', build, true],
    ['release-20200101.0', build, false],
    ['anything', { configured: 'latest', source: 'dir' as const, pinned: '' }, true],
    ['0.1-dev', { configured: '0.1-dev', source: 'dir' as const, pinned: '0.1-dev' }, true],
  ])('%s for %j: %s', (reported, inputs, ok) => {
    expect(gvisor.runscVersion(reported, inputs).ok).toBe(ok);
  });

  it("the shim's answer is image-builder's goss expectation", () => {
    expect(gvisor.shimAnswer()).toEqual({ exitCode: 1, stderr: 'shim namespace cannot be empty' });
    expect(gvisor.shimAnswer.source).toContain('images/capi/packer/goss/goss-command.yaml');
  });
});

describe('image-builder parity', () => {
  it('applies only in image-builder layout', () => {
    expect(imageBuilder.followsLayout({ handler: 'gvisor', binaryPath: '/usr/local/bin/' })).toBe(true);
    expect(imageBuilder.followsLayout({ handler: 'runsc', binaryPath: '/usr/local/bin' })).toBe(false);
    expect(imageBuilder.followsLayout({ handler: 'gvisor', binaryPath: '/var/bin/containerruntimes' })).toBe(false);
  });

  it('conf.d is imported unless the additional settings bring their own imports', () => {
    expect(imageBuilder.configImports(undefined)).toEqual(['/etc/containerd/conf.d/*.toml']);
    expect(imageBuilder.configImports('imports = ["/opt/x.toml"]')).toBeUndefined();
  });

  it('image_pull_progress_timeout is known from containerd 1.7 on, and read in the dump by its own version', () => {
    expect(imageBuilder.knowsImagePullProgressTimeout('1.6.20~ds1')).toBe(false);
    expect(imageBuilder.knowsImagePullProgressTimeout('v1.7.0')).toBe(true);
    expect(imageBuilder.knowsImagePullProgressTimeout('v2.2.9')).toBe(true);
    expect(imageBuilder.knowsImagePullProgressTimeout('unknown')).toBeUndefined();
    expect(imageBuilder.imagePullProgressTimeoutInEffect(v3("[plugins.'io.containerd.cri.v1.images']\nimage_pull_progress_timeout = '1m0s'\n"))).toBe('1m0s');
    expect(imageBuilder.imagePullProgressTimeoutInEffect(parse('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\nimage_pull_progress_timeout = "2m0s"\n') as Toml)).toBe('2m0s');
  });

  it("the installer's drop-ins and imports say what the spec expects", () => {
    const spec = imageBuilder.unitDropIns('/etc/systemd/system');
    const installed = imageBuilderUnitDropIns();
    expect(installed.map((d) => `/etc/systemd/system/${d.path}`)).toEqual(spec.map((d) => d.path));
    for (const [i, d] of spec.entries()) expect(installed[i]!.text).toMatch(new RegExp(`^\\[Service\\][^]*^${d.key}=${d.value}$`, 'm'));
    expect(imageBuilderImports(undefined)).toEqual(imageBuilder.configImports(undefined));
    expect(imageBuilderImports('imports = []')).toEqual([]);
  });

  it('imports are added to the ones config.toml has, once', () => {
    const o = { gvisor: false, handler: 'gvisor', binaryPath: '/usr/local/bin', shim: 'runsc' as const, runscConfigPath: '/etc/containerd/runsc.toml', imports: ['/etc/containerd/conf.d/*.toml'] };
    const once = parse(renderContainerdConfig('version = 2\nimports = ["/etc/a.toml"]\n', o)) as Toml;
    expect(once.imports).toEqual(['/etc/a.toml', '/etc/containerd/conf.d/*.toml']);
    const twice = parse(renderContainerdConfig('version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n', o)) as Toml;
    expect(twice.imports).toEqual(['/etc/containerd/conf.d/*.toml']);
  });

  it("the installer's layout rule agrees with the spec's", () => {
    const cfg = (g: object) => parseConfig(JSON.stringify({ apiVersion: 'gvisor-e2e.dev/v1alpha1', kind: 'Config', cluster: { provider: 'nodes', nodes: [{ name: 'n', pool: 'p', access: { type: 'local' } }] }, gvisor: { pools: ['p'], ...g } }), 't');
    for (const g of [{ handler: 'gvisor', binaryPath: '/usr/local/bin' }, { handler: 'runsc' }, { handler: 'gvisor' }]) {
      const c = cfg(g);
      expect(INSTALL_RULES.imageBuilderLayout(c)).toBe(imageBuilder.followsLayout(c.gvisor));
    }
  });
});

describe('kubernetes: tolerations', () => {
  const taint = { key: 'gvisor-e2e.dev/sandboxed', value: 'true', effect: 'NoSchedule' };
  it.each([
    [{ key: 'gvisor-e2e.dev/sandboxed', operator: 'Equal', value: 'true', effect: 'NoSchedule' }, true],
    [{ key: 'gvisor-e2e.dev/sandboxed', value: 'true' }, true],
    [{ key: 'gvisor-e2e.dev/sandboxed', operator: 'Exists' }, true],
    [{ operator: 'Exists' }, true],
    [{ key: 'gvisor-e2e.dev/sandboxed', value: 'false' }, false],
    [{ key: 'gvisor-e2e.dev/sandboxed', operator: 'Exists', effect: 'NoExecute' }, false],
    [{ key: 'other', operator: 'Exists' }, false],
  ])('%j tolerates the taint: %s', (t, ok) => {
    expect(kubernetes.tolerates(t, taint)).toBe(ok);
  });
});

describe('lifecycle is opt-in', () => {
  const cfg = parseConfig(JSON.stringify({ apiVersion: 'gvisor-e2e.dev/v1alpha1', kind: 'Config', cluster: { provider: 'nodes', nodes: [{ name: 'n', pool: 'p', access: { type: 'local' } }] }, gvisor: { pools: ['p'] } }), 't');
  const all = { kubernetesApi: true, installsNodes: true, cleansUpAfterRun: true, reshapesPools: true };
  it('a cluster that could run it does not, unless it is named', () => {
    expect(chooseSuites(cfg, all)).not.toContain('lifecycle');
    expect(chooseSuites(cfg, all, ['lifecycle'])).toEqual(['lifecycle']);
    // Never beside another suite: it pulls gVisor from under their checks.
    expect(() => chooseSuites(cfg, all, ['lifecycle', 'sandbox-basics'])).toThrow(/lifecycle changes the cluster while it runs: run it on its own \(--suite lifecycle\), not with sandbox-basics/);
    expect(SUITE_NEEDS.lifecycle).toEqual(['kubernetesApi', 'installsNodes', 'reshapesPools']);
  });
});
