import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import {
  containerdConfigVersion,
  findRuntime,
  getIn,
  limitNofileExpected,
  MANAGED_HEADER,
  osFamilyFromOsRelease,
  parseRunscToml,
  renderContainerdConfig,
  renderLimitNofileDropIn,
  renderRunscToml,
  type ContainerdRenderOptions,
  type TomlTable,
} from '../../harness/render.ts';

const fixture = (name: string) => readFileSync(join(import.meta.dirname, 'fixtures', name), 'utf8');
const V2 = fixture('containerd-image-builder-v2.toml');
const V2_BARE = fixture('containerd-v2-no-runtimes.toml');
const V3 = fixture('containerd-2x-v3.toml');

const GARDENER: ContainerdRenderOptions = {
  gvisor: true,
  handler: 'runsc',
  binaryPath: '/var/bin/containerruntimes',
  shim: 'runsc',
  runscConfigPath: '/etc/containerd/runsc.toml',
};

const parse = (text: string) => parseToml(text) as TomlTable;
const render = (original: string, o: Partial<ContainerdRenderOptions> = {}) => renderContainerdConfig(original, { ...GARDENER, ...o });

const V1_RUNTIMES = ['plugins', 'cri', 'containerd', 'runtimes'];
const V2_CRI = ['plugins', 'io.containerd.grpc.v1.cri'];
const V2_RUNTIMES = [...V2_CRI, 'containerd', 'runtimes'];
const V3_RUNTIMES = ['plugins', 'io.containerd.cri.v1.runtime', 'containerd', 'runtimes'];
const V3_IMAGES = ['plugins', 'io.containerd.cri.v1.images'];

const RUNSC_ENTRY = { runtime_type: 'io.containerd.runsc.v1', options: { TypeUrl: 'io.containerd.runsc.v1.options', ConfigPath: '/etc/containerd/runsc.toml' } };

describe('containerdConfigVersion', () => {
  it.each([
    [{}, 1],
    [{ version: 1 }, 1],
    [{ version: 2 }, 2],
    [{ version: 3 }, 3],
  ] as const)('%j → %d', (cfg, v) => {
    expect(containerdConfigVersion({ ...cfg })).toBe(v);
  });

  it.each([{ version: 4 }, { version: '2' }, { version: 0 }])('rejects %j', (cfg) => {
    expect(() => containerdConfigVersion(cfg)).toThrow(/unsupported containerd config version/);
  });

  it('reads the fixtures', () => {
    expect(containerdConfigVersion(parse(V2))).toBe(2);
    expect(containerdConfigVersion(parse(V3))).toBe(3);
    expect(containerdConfigVersion(parse(''))).toBe(1);
  });
});

describe('renderContainerdConfig', () => {
  it('an empty original (version 1) gets the runtime under plugins.cri', () => {
    const out = render('');
    expect(out.startsWith(`${MANAGED_HEADER}\n`)).toBe(true);
    const cfg = parse(out);
    expect(cfg.version).toBeUndefined();
    expect(getIn(cfg, [...V1_RUNTIMES, 'runsc'])).toEqual(RUNSC_ENTRY);
    expect(getIn(cfg, [...V1_RUNTIMES, 'runc'])).toEqual({ runtime_type: 'io.containerd.runc.v2' });
    expect(findRuntime(cfg, 'runsc')).toEqual(RUNSC_ENTRY);
    expect(getIn(cfg, ['plugins', 'io.containerd.grpc.v1.cri'])).toBeUndefined();
  });

  it("image-builder's version 2 config: runtime under io.containerd.grpc.v1.cri, everything else kept", () => {
    const cfg = parse(render(V2));
    const orig = parse(V2);
    expect(cfg.version).toBe(2);
    expect(cfg.imports).toEqual(['/etc/containerd/conf.d/*.toml']);
    expect(getIn(cfg, [...V2_CRI, 'sandbox_image'])).toBe('registry.k8s.io/pause:3.9');
    expect(getIn(cfg, [...V2_CRI, 'registry', 'config_path'])).toBe('/etc/containerd/certs.d');
    expect(getIn(cfg, [...V2_CRI, 'containerd', 'default_runtime_name'])).toBe('runc');
    expect(getIn(cfg, [...V2_RUNTIMES, 'runc'])).toEqual({ runtime_type: 'io.containerd.runc.v2', options: { SystemdCgroup: true } });
    expect(getIn(cfg, [...V2_RUNTIMES, 'runsc'])).toEqual(RUNSC_ENTRY);
    expect(getIn(cfg, ['plugins', 'cri'])).toBeUndefined();
    expect(getIn(cfg, ['plugins', 'io.containerd.cri.v1.runtime'])).toBeUndefined();
    // Nothing else changed: removing the added runtime gives back the original.
    delete (getIn(cfg, V2_RUNTIMES) as TomlTable).runsc;
    expect(JSON.parse(JSON.stringify(cfg))).toEqual(JSON.parse(JSON.stringify(orig)));
  });

  it('the rendered text has the TOML table the gVisor docs show', () => {
    const out = render(V2);
    expect(out).toMatch(/^\[plugins\."io\.containerd\.grpc\.v1\.cri"\.containerd\.runtimes\.runsc\]$/m);
    expect(out).toMatch(/^runtime_type = "io\.containerd\.runsc\.v1"$/m);
    expect(out).toMatch(/^TypeUrl = "io\.containerd\.runsc\.v1\.options"$/m);
    expect(out).toMatch(/^ConfigPath = "\/etc\/containerd\/runsc\.toml"$/m);
    // The version key must stay an integer (containerd rejects `version = 2.0`).
    expect(out).toMatch(/^version = 2$/m);
  });

  it('a version 3 (containerd 2.x) config: io.containerd.cri.v1.runtime and .images', () => {
    const cfg = parse(render(V3, { imagePullProgressTimeout: '5m0s' }));
    expect(cfg.version).toBe(3);
    expect(getIn(cfg, [...V3_RUNTIMES, 'runsc'])).toEqual(RUNSC_ENTRY);
    expect(getIn(cfg, [...V3_RUNTIMES, 'runc', 'options'])).toEqual({ SystemdCgroup: true });
    expect(getIn(cfg, [...V3_IMAGES, 'image_pull_progress_timeout'])).toBe('5m0s');
    expect(getIn(cfg, [...V3_IMAGES, 'snapshotter'])).toBe('overlayfs');
    expect(getIn(cfg, [...V3_IMAGES, 'pinned_images', 'sandbox'])).toBe('registry.k8s.io/pause:3.10');
    expect(getIn(cfg, ['grpc', 'max_recv_message_size'])).toBe(16777216);
    expect(getIn(cfg, ['plugins', 'io.containerd.grpc.v1.cri'])).toBeUndefined();
    expect(findRuntime(cfg, 'runsc')).toEqual(RUNSC_ENTRY);
  });

  it('version 2: image_pull_progress_timeout goes into io.containerd.grpc.v1.cri', () => {
    const cfg = parse(render(V2, { imagePullProgressTimeout: '2m0s' }));
    expect(getIn(cfg, [...V2_CRI, 'image_pull_progress_timeout'])).toBe('2m0s');
    expect(getIn(cfg, ['plugins', 'io.containerd.cri.v1.images'])).toBeUndefined();
  });

  it('imagePullProgressTimeout on a version 1 config throws', () => {
    expect(() => render('', { imagePullProgressTimeout: '5m0s' })).toThrow(/version 2 or 3/);
    expect(() => render('[plugins.cri]\nsandbox_image = "x"\n', { gvisor: false, imagePullProgressTimeout: '5m0s' })).toThrow(/version 1/);
  });

  it('adds the default "runc" runtime when the file had no runtimes (containerd replaces its default map)', () => {
    const cfg = parse(render(V2_BARE));
    expect(getIn(cfg, V2_RUNTIMES)).toEqual({ runc: { runtime_type: 'io.containerd.runc.v2' }, runsc: RUNSC_ENTRY });
    expect(getIn(cfg, [...V2_CRI, 'sandbox_image'])).toBe('registry.k8s.io/pause:3.10');
  });

  it('adds the configured default_runtime_name, not "runc", when that one is missing', () => {
    const orig = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\ndefault_runtime_name = "crun"\n';
    const runtimes = getIn(parse(render(orig)), V2_RUNTIMES) as TomlTable;
    expect(Object.keys(runtimes).sort()).toEqual(['crun', 'runsc']);
  });

  it('does not add a default runtime entry when the default is the gVisor handler itself', () => {
    const orig = 'version = 3\n[plugins."io.containerd.cri.v1.runtime".containerd]\ndefault_runtime_name = "runsc"\n';
    const runtimes = getIn(parse(render(orig)), V3_RUNTIMES) as TomlTable;
    expect(Object.keys(runtimes)).toEqual(['runsc']);
  });

  it('shim "runc-v2": runc v2 shim with runsc as its BinaryName', () => {
    const cfg = parse(render(V2, { shim: 'runc-v2', binaryPath: '/usr/local/bin' }));
    expect(getIn(cfg, [...V2_RUNTIMES, 'runsc'])).toEqual({ runtime_type: 'io.containerd.runc.v2', options: { BinaryName: '/usr/local/bin/runsc' } });
  });

  it("image-builder's handler name \"gvisor\"", () => {
    const cfg = parse(render(V2, { handler: 'gvisor' }));
    expect(getIn(cfg, [...V2_RUNTIMES, 'gvisor'])).toEqual(RUNSC_ENTRY);
    expect(getIn(cfg, [...V2_RUNTIMES, 'runsc'])).toBeUndefined();
    expect(findRuntime(cfg, 'gvisor')).toEqual(RUNSC_ENTRY);
    expect(findRuntime(cfg, 'runsc')).toBeUndefined();
  });

  it('replaces an existing entry for the handler', () => {
    const orig = `${V2}  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc]\n    runtime_type = "io.containerd.runc.v1"\n`;
    expect(getIn(parse(render(orig)), [...V2_RUNTIMES, 'runsc'])).toEqual(RUNSC_ENTRY);
  });

  it('gvisor: false leaves no handler (and adds no default runtime)', () => {
    for (const orig of ['', V2, V2_BARE, V3]) {
      const cfg = parse(render(orig, { gvisor: false }));
      expect(findRuntime(cfg, 'runsc')).toBeUndefined();
      expect(JSON.parse(JSON.stringify(cfg))).toEqual(JSON.parse(JSON.stringify(parse(orig))));
    }
  });

  it('additionalSettings are rendered verbatim, their tables at the end and their headerless keys at the top (top-level keys, as they mean)', () => {
    const extra = '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n  endpoint = ["https://mirror.example"]\n\n[debug]\n  level = "debug"\n';
    const out = render(V2, { additionalSettings: extra });
    expect(out.endsWith(extra)).toBe(true);
    const cfg = parse(out);
    expect(getIn(cfg, [...V2_CRI, 'registry', 'mirrors', 'docker.io', 'endpoint'])).toEqual(['https://mirror.example']);
    expect(getIn(cfg, ['debug', 'level'])).toBe('debug');
    expect(getIn(cfg, [...V2_RUNTIMES, 'runsc'])).toEqual(RUNSC_ENTRY);
    // Appended after the last table (runsc's options on containerd 2.x), this key would land in it.
    const v3 = parse(render(V3, { additionalSettings: 'oom_score = -999\n' }));
    expect(v3.oom_score).toBe(-999);
    expect(JSON.stringify(v3.plugins)).not.toContain('oom_score');
  });

  it('additionalSettings that redefine the gVisor handler or default_runtime_name are refused, naming the key', () => {
    expect(() => render(V2, { additionalSettings: '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc]\nruntime_type = "io.containerd.runc.v2"\n' })).toThrow(
      'containerd.additionalSettings redefines runtime "runsc" (plugins.io.containerd.grpc.v1.cri.containerd.runtimes.runsc), the gVisor handler the install writes',
    );
    expect(() => render(V2, { additionalSettings: '[plugins."io.containerd.grpc.v1.cri".containerd]\ndefault_runtime_name = "runsc"\n' })).toThrow(/sets plugins\.io\.containerd\.grpc\.v1\.cri\.containerd\.default_runtime_name/);
  });

  it('blank additionalSettings add nothing', () => {
    expect(render(V2, { additionalSettings: '  \n' })).toBe(render(V2));
  });

  it('additionalSettings that are not TOML, or break config.toml, throw, naming containerd.additionalSettings', () => {
    expect(() => render(V2, { additionalSettings: '[debug\nlevel = ' })).toThrow(/^containerd\.additionalSettings is not valid TOML/);
    // Redefining a table the config already has is invalid TOML too.
    expect(() => render(V2, { additionalSettings: '[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "/x"\n' })).toThrow(/^containerd\.additionalSettings makes config\.toml invalid TOML/);
  });

  it('an original that does not parse is reported as such', () => {
    expect(() => render('version = \n')).toThrow(/does not parse/);
  });

  it('is idempotent: the same original always renders the same text', () => {
    for (const orig of ['', V2, V2_BARE, V3]) {
      const o = { imagePullProgressTimeout: orig && orig !== V2_BARE ? '5m0s' : undefined, additionalSettings: '[debug]\nlevel = "info"\n' };
      const once = render(orig, o);
      expect(render(orig, o)).toBe(once);
    }
  });

  it('is a fixpoint: rendering a rendered config (without additionalSettings) changes nothing', () => {
    for (const orig of ['', V2, V2_BARE, V3]) {
      const once = render(orig);
      expect(render(once)).toBe(once);
    }
  });
});

describe('runsc.toml', () => {
  it.each(['true', 'false'] as const)('net-raw %s round-trips through parseRunscToml', (v) => {
    const text = renderRunscToml({ 'net-raw': v });
    expect(parseRunscToml(text)).toEqual({ 'net-raw': v, debug: 'false', nvproxy: 'false' });
    expect(text.startsWith('[runsc_config]\n')).toBe(true);
  });

  it('parseRunscToml of a file without [runsc_config] is empty; non-strings are stringified', () => {
    expect(parseRunscToml('')).toEqual({});
    expect(parseRunscToml('[runsc_config]\nnet-raw = true\n')).toEqual({ 'net-raw': 'true' });
  });
});

describe('LimitNOFILE drop-in', () => {
  it('sets LimitNOFILE=1048576 in [Service]', () => {
    const text = renderLimitNofileDropIn();
    const lines = text.split('\n');
    expect(lines[0]).toBe('[Service]');
    expect(lines).toContain('LimitNOFILE=1048576');
    expect(lines.filter((l) => l.startsWith('[')).length).toBe(1);
    expect(lines.filter((l) => /^LimitNOFILE=/.test(l))).toEqual(['LimitNOFILE=1048576']);
  });

  it.each([
    ['flatcar', false, true],
    ['azurelinux', false, true],
    ['mariner', false, true],
    ['flatcar', true, true],
    ['debian', false, false],
    ['ubuntu', false, false],
    ['rhel', false, false],
    ['other', false, false],
    ['debian', true, true],
    ['ubuntu', true, true],
  ] as const)('limitNofileExpected(%s, %s) = %s', (os, flag, want) => {
    expect(limitNofileExpected(os, flag)).toBe(want);
  });
});

describe('osFamilyFromOsRelease', () => {
  it.each([
    ['debian-12', 'debian'],
    ['ubuntu-24.04', 'ubuntu'],
    ['flatcar', 'flatcar'],
    ['azurelinux-3', 'azurelinux'],
    ['cbl-mariner-2', 'mariner'],
    ['rocky-9', 'rhel'],
  ])('%s → %s', (file, family) => {
    expect(osFamilyFromOsRelease(fixture(`os-release/${file}`))).toBe(family);
  });

  it('handles CRLF line ends and unknown distributions', () => {
    expect(osFamilyFromOsRelease(fixture('os-release/ubuntu-24.04').replace(/\n/g, '\r\n'))).toBe('ubuntu');
    expect(osFamilyFromOsRelease('NAME="Alpine Linux"\nID=alpine\n')).toBe('other');
    expect(osFamilyFromOsRelease('')).toBe('other');
  });

  it('uses ID_LIKE for derivatives', () => {
    expect(osFamilyFromOsRelease('NAME="Linux Mint"\nID=linuxmint\nID_LIKE="ubuntu debian"\n')).toBe('ubuntu');
    expect(osFamilyFromOsRelease('NAME="Raspbian GNU/Linux"\nID=raspbian\nID_LIKE=debian\n')).toBe('debian');
    expect(osFamilyFromOsRelease('NAME="Fedora Linux"\nID=fedora\n')).toBe('rhel');
    expect(osFamilyFromOsRelease('NAME="VMware Photon OS"\nID=photon\n')).toBe('photon');
  });

  it('ID alone decides, and NAME alone decides for the drop-in families', () => {
    expect(osFamilyFromOsRelease('ID=mariner\n')).toBe('mariner');
    expect(osFamilyFromOsRelease('ID=azurelinux\n')).toBe('azurelinux');
    expect(osFamilyFromOsRelease('ID=flatcar\n')).toBe('flatcar');
    expect(osFamilyFromOsRelease('NAME="Common Base Linux Mariner"\nID=cbl\n')).toBe('mariner');
    expect(osFamilyFromOsRelease('NAME="Microsoft Azure Linux"\nID=aml\n')).toBe('azurelinux');
    expect(osFamilyFromOsRelease('NAME="Flatcar Container Linux by Kinvolk"\nID=fcl\n')).toBe('flatcar');
  });

  // Regression (was a bug): harness/render.ts osFamilyFromOsRelease only strips double quotes. os-release(5)
  // also allows single-quoted values, which are kept with their quotes ("'rocky'", "'rhel"), so
  // ID='rocky' ID_LIKE='rhel centos fedora' maps to "other" instead of "rhel".
  it('accepts single-quoted values (os-release(5) allows them)', () => {
    expect(osFamilyFromOsRelease("NAME='Rocky Linux'\nID='rocky'\nID_LIKE='rhel centos fedora'\n")).toBe('rhel');
  });
});
