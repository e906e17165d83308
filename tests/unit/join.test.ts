// Joining hosts as kubelets: the bootstrap token and its Secret, kubeadm's RBAC, the kubelet's unit
// and configuration on a joined host, and the vm provider's rules for `kubernetes: true`.
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { bootstrapKubeconfig, bootstrapRbac, bootstrapTokenSecret, BOOTSTRAP_GROUP, newBootstrapToken } from '../../clusters/kube/bootstrap.ts';
import { joinedKubeletConfig, KUBELET_DIR, kubeletUnit, systemdExec } from '../../clusters/kube/join.ts';
import { parseConfig, reproConfig } from '../../clusters/index.ts';
import { ConfigError } from '../../harness/errors.ts';
import { qemuArgs, type QemuSpec } from '../../fixtures/vm/qemu.ts';

describe('bootstrap token (cluster-bootstrap token format, kubeadm tokens)', () => {
  it('is [a-z0-9]{6}.[a-z0-9]{16}, random, with an expiry ttl ahead', () => {
    const now = new Date('2026-12-03T00:00:00Z');
    const a = newBootstrapToken(30 * 60_000, now);
    const b = newBootstrapToken(30 * 60_000, now);
    expect(a.token).toMatch(/^[a-z0-9]{6}\.[a-z0-9]{16}$/);
    expect(a.token).toBe(`${a.id}.${a.secret}`);
    expect(a.token).not.toBe(b.token);
    expect(a.expires.toISOString()).toBe('2026-12-03T00:30:00.000Z');
  });

  it("its Secret is what the API server's bootstrap authenticator reads: kube-system, typed, authentication only, the harness's group", () => {
    const t = newBootstrapToken(60_000, new Date('2026-12-03T00:00:00.123Z'));
    const s = bootstrapTokenSecret(t, 'c1');
    expect(s.metadata).toMatchObject({ name: `bootstrap-token-${t.id}`, namespace: 'kube-system' });
    expect(s.type).toBe('bootstrap.kubernetes.io/token');
    expect(s.stringData).toMatchObject({ 'token-id': t.id, 'token-secret': t.secret, expiration: '2026-12-03T00:01:00Z', 'usage-bootstrap-authentication': 'true', 'auth-extra-groups': BOOTSTRAP_GROUP });
    expect(s.stringData!['usage-bootstrap-signing']).toBeUndefined();
    expect(BOOTSTRAP_GROUP).toMatch(/^system:bootstrappers:/);
  });

  it("RBAC as kubeadm's: the group may create CSRs and gets them approved; nodes' own renewals are approved", () => {
    expect(bootstrapRbac().map((b) => [b.roleRef.name, b.subjects![0]!.name])).toEqual([
      ['system:node-bootstrapper', BOOTSTRAP_GROUP],
      ['system:certificates.k8s.io:certificatesigningrequests:nodeclient', BOOTSTRAP_GROUP],
      ['system:certificates.k8s.io:certificatesigningrequests:selfnodeclient', 'system:nodes'],
    ]);
  });

  it('the bootstrap kubeconfig carries the server, the CA and the token', () => {
    const k = parse(bootstrapKubeconfig('https://10.0.0.1:6443', 'PEM', 'abcdef.0123456789abcdef'));
    expect(k.clusters[0].cluster).toEqual({ server: 'https://10.0.0.1:6443', 'certificate-authority-data': Buffer.from('PEM').toString('base64') });
    expect(k.users[0].user).toEqual({ token: 'abcdef.0123456789abcdef' });
  });
});

describe('kubelet on a joined host', () => {
  it('bootstraps, keeps every file in its own directory, and quotes names from the config', () => {
    const u = kubeletUnit({ name: 'vm-1', pool: 'p"x%$\\', nodeIP: '10.0.0.10' });
    expect(u).toContain(`--bootstrap-kubeconfig=${KUBELET_DIR}/bootstrap-kubeconfig`);
    expect(u).toContain(`--cert-dir=${KUBELET_DIR}/pki`);
    expect(u).toContain(`--root-dir=${KUBELET_DIR}/root`);
    expect(u).toContain('--node-ip=10.0.0.10');
    // systemd's escapes, not a shell's: quote, % specifier, $ variable and backslash stay literal.
    expect(u).toContain('"--node-labels=worker.gardener.cloud/pool=p\\"x%%$$\\\\"');
    expect(u).not.toMatch(/^\[Install\]/m);
  });

  it('ExecStart words are systemd-quoted one by one', () => {
    expect(systemdExec(['/bin/k', 'a b', ''])).toBe('"/bin/k" "a b" ""');
  });

  it('its configuration renews its certificate, matches the cgroup driver, and keeps pod logs in its directory', () => {
    const c = joinedKubeletConfig({ cgroupDriver: 'systemd', containerdSocket: '/run/c.sock' }) as Record<string, unknown>;
    expect(c).toMatchObject({ rotateCertificates: true, cgroupDriver: 'systemd', containerRuntimeEndpoint: 'unix:///run/c.sock', podLogsDir: `${KUBELET_DIR}/pod-logs`, volumePluginDir: `${KUBELET_DIR}/volume-plugins`, readOnlyPort: 0 });
    expect((c.authentication as { anonymous: { enabled: boolean } }).anonymous.enabled).toBe(false);
  });
});

describe('config: provider vm with kubernetes: true', () => {
  const cfg = (hosts: string, extra = '') => `apiVersion: gvisor-e2e.dev/v1alpha1
kind: Config
cluster:
  provider: vm
  kubernetes: true
${extra}
  hosts:
${hosts}
gvisor:
  pools: [gvisor]
`;
  const host = (address: string, more = '') => `    - name: vm-1
      pool: gvisor
      address: ${address}
      privateKeyPath: /k
      hostKeyFingerprint: SHA256:${'A'.repeat(43)}
${more}`;
  const issues = (text: string) => {
    try {
      parseConfig(text, 'vm.yaml');
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      return (e as ConfigError).issues;
    }
    return [];
  };

  it('a host at a loopback address is refused at its nodeIP: the API server could not reach its kubelet', () => {
    expect(issues(cfg(host('127.0.0.1')))).toEqual([{ path: 'cluster.hosts[0].nodeIP', message: expect.stringContaining('127.0.0.1, a loopback address') }]);
    expect(issues(cfg(host('127.0.0.1', '      nodeIP: 192.0.2.10')))).toEqual([]);
    expect(issues(cfg(host('192.0.2.10')))).toEqual([]);
  });

  it('kubernetes and kubeconfig together, and addresses that are not IPv4, are errors naming the field', () => {
    expect(issues(cfg(host('192.0.2.10'), '  kubeconfig: /kc')).map((i) => i.path)).toEqual(['cluster.kubernetes']);
    expect(issues(cfg(host('192.0.2.10'), '  apiServerAddress: not-an-ip')).map((i) => i.path)).toEqual(['cluster.apiServerAddress']);
  });

  it('offers the Kubernetes API (so every suite runs) and repro on its hosts', () => {
    const c = parseConfig(cfg(host('192.0.2.10')), 'vm.yaml');
    expect(reproConfig(c)?.cluster).toEqual(c.cluster);
  });
});

describe('VM fixture: a LAN NIC', () => {
  it('a tap on the LAN bridge as a second virtio NIC with its own MAC', () => {
    const spec: QemuSpec = { name: 'v', accel: 'tcg', memoryMb: 1, cpus: 1, kernel: 'k', initrd: 'i', overlay: 'o', seed: 's', sshPort: 1, consoleLog: 'c', pidFile: 'p', lan: { tap: 'gve2evmabcdeft0', mac: '52:54:00:e2:4b:0a' } };
    const a = qemuArgs(spec);
    expect(a.filter((_, i) => a[i - 1] === '-netdev')).toEqual(['user,id=net0,hostfwd=tcp:127.0.0.1:1-:22', 'tap,id=net1,ifname=gve2evmabcdeft0,script=no,downscript=no']);
    expect(a).toContain('virtio-net-pci,netdev=net1,mac=52:54:00:e2:4b:0a');
  });
});
