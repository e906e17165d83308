import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { describe, expect, it } from 'vitest';
import {
  containerdNewEnough,
  parseContainerdVersion,
  renderCniConflist,
  renderContainerdUnit,
  renderProvisionedConfig,
  vmNodeConfig,
} from '../../clusters/vm/index.ts';
import { chooseAccel, qemuArgs, reapStaleVms, vmImageKey, VM_PACKAGES, type QemuSpec } from '../../fixtures/vm/qemu.ts';
import { loadConfig, parseConfig } from '../../clusters/index.ts';
import { selectSuites } from '../../bin/app.ts';
import { ConfigError } from '../../harness/errors.ts';
import { containerdConfigVersion, findRuntime, renderContainerdConfig } from '../../harness/render.ts';

const FP = `SHA256:${'A'.repeat(43)}`;

function vmConfig(hosts: string, extra = ''): string {
  return `apiVersion: gvisor-e2e.dev/v1alpha1
kind: Config
cluster:
  provider: vm
${extra}
  hosts:
${hosts}
gvisor:
  pools: [gvisor]
`;
}

const HOST = `    - name: vm-1
      pool: gvisor
      address: 127.0.0.1
      port: 2222
      privateKeyPath: keys/id_ed25519
      knownHostsPath: keys/known_hosts`;

function issues(text: string): { path: string; message: string }[] {
  try {
    parseConfig(text, 'vm.yaml');
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as ConfigError).issues;
  }
  throw new Error('expected a ConfigError');
}

describe('config: provider vm', () => {
  it('a minimal vm config gets its defaults and maps to an SSH node', () => {
    const c = parseConfig(vmConfig(HOST), 'vm.yaml');
    if (c.cluster.provider !== 'vm') throw new Error(c.cluster.provider);
    const h = c.cluster.hosts[0]!;
    expect(h).toEqual({ name: 'vm-1', pool: 'gvisor', address: '127.0.0.1', port: 2222, user: 'root', privateKeyPath: 'keys/id_ed25519', knownHostsPath: 'keys/known_hosts', osFamily: 'auto' });
    expect(c.cluster.kubeconfig).toBeUndefined();
    const n = vmNodeConfig(h);
    expect(n.access).toEqual({ type: 'ssh', host: '127.0.0.1', port: 2222, user: 'root', privateKeyPath: 'keys/id_ed25519', knownHostsPath: 'keys/known_hosts' });
    expect(n.paths.containerdSocket).toBe('/run/containerd/containerd.sock');
    expect(n.containerd.restartCommand).toContain('systemctl restart containerd');
    expect(selectSuites(c)).not.toContain('runtimeclass-scheduling');
  });

  it('port defaults to 22 and a fingerprint pins the host key instead of known_hosts', () => {
    const c = parseConfig(vmConfig(`    - { name: vm-1, pool: gvisor, address: 10.0.0.9, privateKeyPath: k, hostKeyFingerprint: "${FP}" }`), 'vm.yaml');
    if (c.cluster.provider !== 'vm') throw new Error(c.cluster.provider);
    expect(c.cluster.hosts[0]!.port).toBe(22);
    expect(c.cluster.hosts[0]!.hostKeyFingerprint).toBe(FP);
  });

  it('a host without knownHostsPath or hostKeyFingerprint is refused at its path: host keys are never trusted silently', () => {
    const i = issues(vmConfig(`    - { name: vm-1, pool: gvisor, address: 10.0.0.9, privateKeyPath: k }`));
    expect(i).toEqual([{ path: 'cluster.hosts[0]', message: expect.stringContaining('set knownHostsPath or hostKeyFingerprint') }]);
  });

  it('field errors name the field path', () => {
    const i = issues(vmConfig(`${HOST}\n    - { name: vm-2, pool: gvisor, address: 10.0.0.9, port: 70000, privateKeyPath: k, hostKeyFingerprint: "SHA256:short", osFamily: windows, adress: x }`));
    const paths = i.map((x) => x.path);
    expect(paths).toContain('cluster.hosts[1].port');
    expect(paths).toContain('cluster.hosts[1].hostKeyFingerprint');
    expect(paths).toContain('cluster.hosts[1].osFamily');
    expect(i.find((x) => x.path === 'cluster.hosts[1]')?.message).toMatch(/unknown key\(s\) "adress"/);
  });

  it('duplicate host names and addresses, unknown pools and an empty host list are errors', () => {
    const dup = issues(vmConfig(`${HOST}\n${HOST.replace('pool: gvisor', 'pool: other')}`));
    expect(dup).toContainEqual({ path: 'cluster.hosts[1].name', message: 'duplicate host name "vm-1"' });
    expect(dup).toContainEqual({ path: 'cluster.hosts[1].address', message: '127.0.0.1:2222 is already host [0]' });
    const pool = issues(vmConfig(HOST.replace('pool: gvisor', 'pool: plain')));
    expect(pool).toContainEqual({ path: 'gvisor.pools[0]', message: 'no host is in pool "gvisor" (pools: plain)' });
    expect(issues(vmConfig('    []')).map((x) => x.path)).toContain('cluster.hosts');
  });

  it('relative key, known_hosts and kubeconfig paths resolve against the config file; a kubeconfig enables the scheduling suite', () => {
    const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-unit-vm-'));
    try {
      // loadConfig checks that key files are readable (a missing one is a usage error).
      mkdirSync(join(dir, 'keys'));
      writeFileSync(join(dir, 'keys/id_ed25519'), 'key', { mode: 0o600 });
      writeFileSync(join(dir, 'keys/known_hosts'), '');
      writeFileSync(join(dir, 'c.yaml'), vmConfig(HOST, '  kubeconfig: kube/admin.conf'));
      const c = loadConfig(join(dir, 'c.yaml'));
      if (c.cluster.provider !== 'vm') throw new Error(c.cluster.provider);
      expect(c.cluster.hosts[0]!.privateKeyPath).toBe(join(dir, 'keys/id_ed25519'));
      expect(c.cluster.hosts[0]!.knownHostsPath).toBe(join(dir, 'keys/known_hosts'));
      expect(c.cluster.kubeconfig).toBe(join(dir, 'kube/admin.conf'));
      expect(selectSuites(c)).toContain('runtimeclass-scheduling');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('config: provider vm key files', () => {
  it('a host key file that cannot be read is a usage error naming the host field', () => {
    const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-unit-vm-'));
    try {
      writeFileSync(join(dir, 'c.yaml'), vmConfig(HOST));
      let err: unknown;
      try {
        loadConfig(join(dir, 'c.yaml'));
      } catch (e) {
        err = e;
      }
      expect(String((err as Error)?.message)).toMatch(/cluster\.hosts\[0\]\.privateKeyPath: cannot read .*keys\/id_ed25519: ENOENT/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('vm provider: containerd version rule and rendered files', () => {
  it('parses upstream and Debian `containerd --version` output', () => {
    expect(parseContainerdVersion('containerd github.com/containerd/containerd/v2 v2.2.9 \n')).toMatchObject({ major: 2, minor: 2, patch: 9, raw: 'v2.2.9' });
    expect(parseContainerdVersion('containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1')).toMatchObject({ major: 1, minor: 6, patch: 20 });
    expect(parseContainerdVersion('sh: containerd: not found')).toBeUndefined();
  });

  it('only containerd >= 2.0 can drive the runsc shim', () => {
    expect(containerdNewEnough(parseContainerdVersion('containerd x 1.7.27 y'))).toBe(false);
    expect(containerdNewEnough(parseContainerdVersion('containerd x v2.0.0 y'))).toBe(true);
    expect(containerdNewEnough(undefined)).toBe(false);
  });

  it('the provisioned config is schema 3 with its own root/state and the offline sandbox image, and the installer renders on top of it', () => {
    const text = renderProvisionedConfig({ sandboxImage: 'gvisor-e2e.local/pause:bb-1', cniBinDir: '/opt/cni/bin' });
    const t = parseToml(text) as Record<string, any>;
    expect(containerdConfigVersion(t)).toBe(3);
    expect(t.root).toBe('/var/lib/gvisor-e2e/containerd');
    expect(t.state).toBe('/run/gvisor-e2e/containerd');
    expect(t.plugins['io.containerd.cri.v1.images'].pinned_images.sandbox).toBe('gvisor-e2e.local/pause:bb-1');
    expect(t.plugins['io.containerd.cri.v1.runtime'].cni.bin_dirs).toEqual(['/opt/cni/bin']);
    const installed = parseToml(
      renderContainerdConfig(text, { gvisor: true, handler: 'runsc', binaryPath: '/var/bin/containerruntimes', shim: 'runsc', runscConfigPath: '/etc/containerd/runsc.toml' }),
    ) as Record<string, any>;
    expect(findRuntime(installed, 'runsc')?.runtime_type).toBe('io.containerd.runsc.v1');
    expect(findRuntime(installed, 'runc')?.runtime_type).toBe('io.containerd.runc.v2');
    expect(installed.root).toBe('/var/lib/gvisor-e2e/containerd');
  });

  it('the unit runs the provisioned binary under systemd and leaves LimitNOFILE to the drop-in under test', () => {
    const u = renderContainerdUnit('/usr/local/bin');
    expect(u).toMatch(/^ExecStart=\/usr\/local\/bin\/containerd$/m);
    expect(u).toMatch(/^Type=notify$/m);
    expect(u).toMatch(/^Delegate=yes$/m);
    expect(u).not.toMatch(/LimitNOFILE/);
    expect(u).toMatch(/^WantedBy=multi-user.target$/m);
  });

  it('the CNI conflist is a bridge with host-local IPAM', () => {
    const c = JSON.parse(renderCniConflist('10.88.0.0/16'));
    expect(c.plugins[0]).toMatchObject({ type: 'bridge', ipam: { type: 'host-local', ranges: [[{ subnet: '10.88.0.0/16' }]] } });
  });
});

describe('VM fixture: qemu command line and acceleration', () => {
  const spec: QemuSpec = {
    name: 'vm-1',
    accel: 'tcg',
    memoryMb: 1024,
    cpus: 2,
    kernel: '/c/vmlinuz',
    initrd: '/c/initrd.img',
    overlay: '/w/overlay.qcow2',
    seed: '/w/seed.tar',
    sshPort: 40022,
    consoleLog: '/w/console.log',
    pidFile: '/w/qemu.pid',
  };
  const arg = (args: string[], flag: string) => args.filter((_, i) => args[i - 1] === flag);

  it('boots the cached kernel with a qcow2 overlay, a read-only seed disk and sshd forwarded to loopback only', () => {
    const a = qemuArgs(spec);
    expect(arg(a, '-accel')).toEqual(['tcg,thread=multi']);
    expect(arg(a, '-cpu')).toEqual(['max']);
    expect(arg(a, '-m')).toEqual(['1024M']);
    expect(arg(a, '-smp')).toEqual(['2']);
    expect(arg(a, '-kernel')).toEqual(['/c/vmlinuz']);
    expect(arg(a, '-append')[0]).toMatch(/root=\/dev\/vda .*console=ttyS0/);
    expect(arg(a, '-drive')).toEqual(['file=/w/overlay.qcow2,if=virtio,format=qcow2,cache=unsafe', 'file=/w/seed.tar,if=virtio,format=raw,readonly=on']);
    expect(arg(a, '-netdev')).toEqual(['user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22']);
    expect(arg(a, '-serial')).toEqual(['file:/w/console.log']);
    expect(arg(a, '-pidfile')).toEqual(['/w/qemu.pid']);
    expect(a).toContain('-no-reboot');
    expect(arg(qemuArgs({ ...spec, accel: 'kvm' }), '-accel')).toEqual(['kvm']);
  });

  it('uses KVM only with real hardware virtualization; PVM and a missing /dev/kvm fall back to TCG and say why', () => {
    expect(chooseAccel({ kvmDevice: true, pvm: true, hardwareVirt: false })).toEqual({ accel: 'tcg', reason: expect.stringContaining('PVM') });
    expect(chooseAccel({ kvmDevice: false, pvm: false, hardwareVirt: true }).accel).toBe('tcg');
    expect(chooseAccel({ kvmDevice: true, pvm: false, hardwareVirt: false }).reason).toMatch(/no vmx\/svm/);
    expect(chooseAccel({ kvmDevice: true, pvm: false, hardwareVirt: true }).accel).toBe('kvm');
    expect(chooseAccel({ kvmDevice: true, pvm: true, hardwareVirt: false, override: 'kvm' }).accel).toBe('kvm');
  });

  it('the image cache key follows the package list and the recipe version', () => {
    expect(vmImageKey()).toBe(vmImageKey([...VM_PACKAGES]));
    expect(vmImageKey([...VM_PACKAGES, 'curl'])).not.toBe(vmImageKey());
    expect(vmImageKey(VM_PACKAGES, 99)).not.toBe(vmImageKey());
  });
});


describe('VM fixture: stale VMs', () => {
  it('a VM work dir whose owner process is gone is removed; one with a live owner is left alone', async () => {
    const dead = spawnSync('true').pid!;
    const stale = mkdtempSync(join(tmpdir(), 'gvisor-e2e-vm-unit-stale-'));
    const live = mkdtempSync(join(tmpdir(), 'gvisor-e2e-vm-unit-live-'));
    try {
      writeFileSync(join(stale, 'owner'), String(dead));
      writeFileSync(join(live, 'owner'), String(process.pid));
      const reaped = await reapStaleVms();
      expect(reaped).toContain(stale);
      expect(existsSync(stale)).toBe(false);
      expect(existsSync(live)).toBe(true);
    } finally {
      rmSync(stale, { recursive: true, force: true });
      rmSync(live, { recursive: true, force: true });
    }
  });
});
