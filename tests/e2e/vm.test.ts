import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLUSTER_MARKER } from '../../clusters/kube/controlplane.ts';
import { vmDoctor, vmNodeConfig } from '../../clusters/vm/index.ts';
import { Lan } from '../../fixtures/vm/lan.ts';
import { qemuProcesses, Vm } from '../../fixtures/vm/qemu.ts';
import { loadConfig, parseConfig } from '../../clusters/index.ts';
import { buildTestImage } from '../../harness/image.ts';
import { SshNode } from '../../harness/node.ts';
import { ALL_SUITES_PASSED, cli, type CliResult, failures, latestSummary, ROOT, scratch, suiteStates, writeConfig } from './helpers.ts';

// The vm provider on two real VMs: Debian bookworm booted by qemu (TCG here: /dev/kvm is PVM),
// with Debian's containerd 1.6, too old for the runsc shim, on a LAN bridge of this machine. With
// `kubernetes: true` the harness provisions containerd 2.x under systemd, runs the control plane on
// this machine and joins both VMs' kubelets with a bootstrap token; every suite passes, with a real
// systemd applying the LimitNOFILE drop-in to the containerd that runs the gVisor pods. A broken VM
// fails with the cause named; repro puts image-builder's layout on the same VMs; `down` drains and
// deletes the Nodes, stops the kubelets and puts each VM back exactly as a snapshot taken before.

const dir = scratch('vm');
const reports = join(dir, 'reports');
const env = { GVISOR_E2E_STATE: join(dir, 'state') };
// The Shoot fixture's pools, so that repro runs on the same hosts.
const HOSTS = [
  { name: 'vm-1', pool: 'sandboxed' },
  { name: 'vm-2', pool: 'default' },
];
let lan: Lan | undefined;
let vms: Vm[] = [];
let addresses: string[] = [];
let cfgPath = '';
let raw: { cluster: { hosts: Record<string, unknown>[] } & Record<string, unknown> } & Record<string, unknown>;
let ssh: SshNode[] = [];
/** What each VM looked like before the harness touched it. */
let before: string[] = [];

async function out(i: number, cmd: string): Promise<string> {
  const r = await ssh[i]!.exec(cmd, { timeoutMs: 120_000 });
  return r.stdout.trim();
}

/**
 * What `down` must bring back, wide: every path on the root file system and /run (type and mode;
 * journals, caches and udev's device records aside), the mounts, the kernel settings a kubelet
 * changes, routes, links, systemd's units, and containerd's version and config.
 */
async function snapshot(i: number): Promise<string> {
  return out(
    i,
    [
      "find / /run -xdev \\( -path /var/log/journal -o -path /tmp -o -path /var/tmp -o -path /var/cache -o -path /var/lib/systemd -o -path /run/systemd -o -path /run/user -o -path /run/log -o -path /run/udev \\) -prune -o -printf '%y %m %p\\n' | sort",
      'findmnt -rn -o TARGET,FSTYPE | sort',
      'for k in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do echo "$k=$(cat /proc/sys/$k)"; done',
      'ip -o route; ip -o link | cut -d: -f2',
      "systemctl list-units --all --no-legend --plain | awk '{print $1, $3}' | grep -v '^session-' | sort",
      'containerd --version; systemctl is-active containerd; sha256sum /etc/containerd/config.toml',
    ].join('; echo; '),
  );
}

/** The CLI with a longer leash than cli()'s 10 minutes: under TCG a full run took 6-8 min on a busy 2-core machine. */
function run(args: string[]): CliResult {
  const t0 = Date.now();
  const p = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'bin/gvisor-e2e.ts'), '--config', cfgPath, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 1_500_000, env: { ...process.env, ...env } });
  const r = { code: p.status ?? -1, stdout: p.stdout, stderr: p.stderr };
  console.log(`gvisor-e2e ${args.join(' ')} → exit ${r.code} in ${((Date.now() - t0) / 1000).toFixed(0)}s`);
  return r;
}

function api(): { core: k8s.CoreV1Api; certs: k8s.CertificatesV1Api; node: k8s.NodeV1Api; kubeconfig: string } {
  const kubeconfig = join(env.GVISOR_E2E_STATE, 'vm-vm-e2e', 'control-plane', 'admin.kubeconfig');
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(kubeconfig);
  return { core: kc.makeApiClient(k8s.CoreV1Api), certs: kc.makeApiClient(k8s.CertificatesV1Api), node: kc.makeApiClient(k8s.NodeV1Api), kubeconfig };
}

beforeAll(async () => {
  lan = Lan.create();
  const ports = HOSTS.map(() => lan!.port());
  addresses = ports.map((p) => p.address);
  vms = await Promise.all(HOSTS.map((h, i) => Vm.boot({ name: h.name, lan: ports[i], memoryMb: 1536, timeoutMs: 420_000, onProgress: (m) => console.log(m) })));
  raw = {
    apiVersion: 'gvisor-e2e.dev/v1alpha1',
    kind: 'Config',
    cluster: {
      provider: 'vm',
      name: 'vm-e2e',
      kubernetes: true,
      // Reached on the LAN by their own addresses (what the API server reaches the kubelets at); host keys pinned by fingerprint.
      hosts: HOSTS.map((h, i) => ({ ...h, address: addresses[i], port: 22, privateKeyPath: vms[i]!.privateKeyPath, hostKeyFingerprint: vms[i]!.hostKeyFingerprint, osFamily: 'debian' })),
    },
    gvisor: { pools: ['sandboxed'], configFlags: { 'net-raw': 'false' } },
    containerd: { enableLimitNoFile: true },
    // TCG emulates every instruction: a sandbox boot is seconds, not milliseconds.
    timeouts: { command: '120s', container: '240s', containerdRestart: '120s' },
    reportsDir: reports,
  };
  cfgPath = writeConfig(dir, 'vm.yaml', raw);
  const cfg = parseConfig(JSON.stringify(raw), 'vm test config');
  if (cfg.cluster.provider !== 'vm') throw new Error('unreachable');
  ssh = cfg.cluster.hosts.map((h) => new SshNode(vmNodeConfig(h)));
  before = await Promise.all(HOSTS.map((_, i) => snapshot(i)));
}, 1_200_000);

afterAll(async () => {
  // A failed test must not leave a control plane running on this machine.
  if (existsSync(join(env.GVISOR_E2E_STATE, 'vm-vm-e2e'))) run(['down']);
  for (const s of ssh) await s.close();
  for (const v of vms) await v.stop();
  lan?.close();
  rmSync(dir, { recursive: true, force: true });
}, 900_000);

describe('vm provider: two qemu VMs joined as Kubernetes nodes', () => {
  it("the VMs are what the test needs: real systemd as PID 1, Debian's containerd 1.6, pinned host keys; doctor passes", async () => {
    for (let i = 0; i < vms.length; i++) {
      expect(await out(i, 'cat /proc/1/comm')).toBe('systemd');
      expect(await out(i, 'containerd --version')).toMatch(/ 1\.6\.\d+/);
      expect(vms[i]!.hostKeyFingerprint).toMatch(/^SHA256:/);
    }
    const d = run(['doctor']);
    expect(d.stdout).toContain('reachable, host key verified');
    expect(d.code, d.stdout).toBe(0);
    // (the table wraps long cells, so only a short phrase is matched)
    expect(d.stdout).toMatch(/< 2\.0: `up` provisions/);
  });

  it('doctor says exactly what is wrong with a host key: not in known_hosts, or not the pinned fingerprint', async () => {
    const host = raw.cluster.hosts[0]!;
    writeFileSync(join(dir, 'empty_known_hosts'), '');
    const variants = [
      [{ ...host, hostKeyFingerprint: undefined, knownHostsPath: join(dir, 'empty_known_hosts') }, 'pinned host key', `empty_known_hosts has no key for ${addresses[0]}`],
      [{ ...host, hostKeyFingerprint: `SHA256:${'A'.repeat(43)}` }, `SSH root@${addresses[0]}:22`, `it presented ${vms[0]!.hostKeyFingerprint}, expected SHA256:${'A'.repeat(43)}`],
    ] as const;
    for (const [h, check, why] of variants) {
      const bad = writeConfig(dir, 'vm-bad.yaml', { ...raw, cluster: { ...raw.cluster, hosts: [h, raw.cluster.hosts[1]] } });
      expect(cli(['--config', bad, 'doctor'], env).code).toBe(2);
      const c = loadConfig(bad);
      if (c.cluster.provider !== 'vm') throw new Error('unreachable');
      const f = (await vmDoctor(c.cluster)).find((x) => x.check === `vm-1: ${check}`);
      expect(f?.ok).toBe(false);
      expect(f?.detail).toContain(why);
    }
  });

  it("a joined host reached through a port forwarded to this machine's loopback is refused before anything starts (exit 64, the field named)", () => {
    const bad = writeConfig(dir, 'vm-loopback.yaml', { ...raw, cluster: { ...raw.cluster, hosts: [{ ...raw.cluster.hosts[0], address: '127.0.0.1', port: vms[0]!.sshPort }, raw.cluster.hosts[1]] } });
    const r = cli(['--config', bad, 'up'], env);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain('cluster.hosts[0].nodeIP');
    expect(r.stderr).toContain('127.0.0.1, a loopback address');
    expect(existsSync(join(env.GVISOR_E2E_STATE, 'vm-vm-e2e'))).toBe(false);
  });

  it("run provisions containerd 2.x, joins both VMs with a bootstrap token it then deletes, and the mission's five suites pass", () => {
    // sandbox-basics (beyond the five) runs on every other provider; under TCG its five sandboxes
    // were a third of this run's CPU, and this file is the longest of CI.
    const r = run(['run', '--skip', 'sandbox-basics']);
    const s = latestSummary(reports);
    expect(SUITE_FAILURES(s), r.stderr.slice(-3000)).toEqual([]);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(suiteStates(s)).toEqual(ALL_SUITES_PASSED.filter(([name]) => name !== 'sandbox-basics'));
    expect(r.stderr).toMatch(/containerd 1\.6\.\d+\S* is too old for the runsc shim/);
    const made = /bootstrap token ([a-z0-9]{6}) made for cluster "vm-e2e"/.exec(r.stderr);
    expect(made, r.stderr.slice(-3000)).not.toBeNull();
    expect(r.stderr).toContain(`bootstrap token(s) ${made![1]} deleted`);
    // Under a real systemd nothing caps the drop-in: every limit-nofile check ran (none skipped) and passed, a pod's too.
    const nofile = s.checks.filter((c) => c.suite === 'limit-nofile' && c.node === 'vm-1');
    expect(nofile.map((c) => c.state)).toEqual(nofile.map(() => 'passed'));
    expect(nofile.map((c) => c.name)).toContainEqual(expect.stringMatching(/pod sees containerd's open-file limit/));
  }, 1_500_000);

  it('the evidence: Nodes Ready at their LAN addresses in their pools; no token left; each kubelet holds a certificate of its own from the cluster CA', async () => {
    const { core, certs, node } = api();
    const nodes = (await core.listNode()).items;
    expect(nodes.map((n) => [n.metadata!.name, n.metadata!.labels!['worker.gardener.cloud/pool'], n.status!.addresses!.find((a) => a.type === 'InternalIP')?.address, n.status!.conditions!.find((c) => c.type === 'Ready')?.status]).sort()).toEqual(
      HOSTS.map((h, i) => [h.name, h.pool, addresses[i], 'True']),
    );
    // The RuntimeClass schedules onto the gVisor pool's node only.
    const rc = await node.readRuntimeClass({ name: 'gvisor' });
    expect(rc.handler).toBe('runsc');
    const selected = nodes.filter((n) => Object.entries(rc.scheduling!.nodeSelector!).every(([k, v]) => n.metadata!.labels![k] === v)).map((n) => n.metadata!.name);
    expect(selected).toEqual(['vm-1']);
    expect((await core.listNamespacedSecret({ namespace: 'kube-system', fieldSelector: 'type=bootstrap.kubernetes.io/token' })).items).toEqual([]);
    const csrs = (await certs.listCertificateSigningRequest()).items.filter((c) => c.spec.signerName === 'kubernetes.io/kube-apiserver-client-kubelet');
    expect(csrs.length).toBeGreaterThanOrEqual(2);
    for (const c of csrs) {
      expect(c.spec.username).toMatch(/^system:bootstrap:[a-z0-9]{6}$/);
      expect(c.status?.conditions?.map((x) => x.type)).toContain('Approved');
    }
    const ca = join(env.GVISOR_E2E_STATE, 'vm-vm-e2e', 'control-plane', 'pki', 'ca.crt');
    for (let i = 0; i < HOSTS.length; i++) {
      expect(await out(i, 'test -e /var/lib/gvisor-e2e/kubelet/bootstrap-kubeconfig && echo present || echo gone')).toBe('gone');
      const pem = await out(i, "sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' /var/lib/gvisor-e2e/kubelet/pki/kubelet-client-current.pem");
      writeFileSync(join(dir, 'client.pem'), `${pem}\n`);
      const subject = spawnSync('openssl', ['x509', '-in', join(dir, 'client.pem'), '-noout', '-subject', '-nameopt', 'RFC2253'], { encoding: 'utf8' }).stdout.trim();
      expect(subject).toBe(`subject=CN=system:node:${HOSTS[i]!.name},O=system:nodes`);
      expect(spawnSync('openssl', ['verify', '-CAfile', ca, join(dir, 'client.pem')], { encoding: 'utf8' }).stdout.trim()).toBe(`${join(dir, 'client.pem')}: OK`);
    }
    // The gVisor VM's containerd: 2.x under systemd, 1048576 open files, soft and hard.
    expect(await out(0, 'containerd --version')).toMatch(/ v2\.\d+\.\d+/);
    expect(await out(0, 'systemctl show containerd -p LimitNOFILE')).toBe('LimitNOFILE=1048576');
    expect(await out(0, 'grep "Max open files" /proc/"$(systemctl show containerd -p MainPID --value)"/limits')).toMatch(/^Max open files\s+1048576\s+1048576\s+files$/);
  });

  it('a broken VM fails with the cause named: net-raw flipped on the node, the drop-in removed', async () => {
    await out(0, `sed -i 's/net-raw = "false"/net-raw = "true"/' /etc/containerd/runsc.toml && rm /etc/systemd/system/containerd.service.d/limit-nofile.conf && systemctl daemon-reload`);
    const r = run(['run', '--no-install', '--suite', 'net-raw', 'limit-nofile']);
    expect(r.code).toBe(1);
    const s = latestSummary(reports);
    const netRaw = failures(s, 'net-raw');
    expect(netRaw).toHaveLength(1);
    expect(netRaw[0]!.message).toMatch(/net-raw is off but ping opened a raw socket in the sandbox on vm-1 .*has net-raw = "true"/);
    const nofile = failures(s, 'limit-nofile').map((f) => f.message);
    expect(nofile).toContainEqual(expect.stringMatching(/limit-nofile\.conf is missing on vm-1: expected LimitNOFILE=1048576/));
  }, 1_500_000);

  it("repro of the Shoot with image-builder variables on the same VMs: image-builder's layout (handler gvisor, /usr/local/bin) passes", () => {
    const shoot = join(ROOT, 'fixtures/manifests/shoot.yaml');
    const vars = join(ROOT, 'fixtures/image-builder/vars.yaml');
    const r = run(['repro', shoot, '--image-builder', vars, '--suite', 'runsc-installation', 'runtimeclass-scheduling', 'limit-nofile']);
    expect(r.code, r.stderr.slice(-4000)).toBe(0);
    const s = latestSummary(reports);
    expect(suiteStates(s)).toEqual([['runsc-installation', 'passed'], ['limit-nofile', 'passed'], ['runtimeclass-scheduling', 'passed']]);
    const names = s.checks.map((c) => `${c.node}: ${c.name}`);
    expect(names).toContain('vm-1: config.toml declares runtime handler "gvisor" (io.containerd.runsc.v1)');
    expect(names).toContain('vm-1: runsc is installed at /usr/local/bin/runsc and executable');
  }, 1_500_000);

  it('down drains a running pod, deletes the Nodes, stops the control plane and kubelets, and puts each VM back exactly', async () => {
    const { core } = api();
    const image = await buildTestImage();
    await core.createNamespace({ body: { metadata: { name: 'vm-e2e-drain' } } });
    await core.createNamespacedPod({
      namespace: 'vm-e2e-drain',
      body: { metadata: { name: 'sleeper' }, spec: { nodeName: 'vm-2', terminationGracePeriodSeconds: 5, containers: [{ name: 'c', image: image.image, imagePullPolicy: 'Never', command: ['sleep', '3600'] }] } },
    });
    const deadline = Date.now() + 240_000;
    while ((await core.readNamespacedPod({ name: 'sleeper', namespace: 'vm-e2e-drain' })).status?.phase !== 'Running') {
      expect(Date.now(), 'pod vm-e2e-drain/sleeper to run on vm-2').toBeLessThan(deadline);
      await new Promise((res) => setTimeout(res, 2000));
    }
    const r = run(['down']);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(r.stderr).toContain('[vm-2] drained (1 pod(s) evicted) and deleted');
    for (let i = 0; i < HOSTS.length; i++) expect(await snapshot(i), HOSTS[i]!.name).toEqual(before[i]);
    const S = join(env.GVISOR_E2E_STATE, 'vm-vm-e2e');
    expect(existsSync(S)).toBe(false);
    const marked = readdirSync('/proc').filter((p) => {
      try {
        return readFileSync(`/proc/${p}/environ`, 'latin1').includes(`${CLUSTER_MARKER}=${S}\0`);
      } catch {
        return false;
      }
    });
    expect(marked).toEqual([]);
  }, 900_000);

  it('stopping the VMs and the LAN leaves no qemu process, no file and no network link on this machine', async () => {
    const works = vms.map((v) => v.workDir);
    for (const w of works) expect(qemuProcesses(w)).toHaveLength(1);
    for (const s of ssh.splice(0)) await s.close();
    for (const v of vms.splice(0)) await v.stop();
    const bridge = lan!.net.bridge;
    lan!.close();
    lan = undefined;
    for (const w of works) {
      expect(qemuProcesses(w)).toEqual([]);
      expect(existsSync(w)).toBe(false);
    }
    expect(spawnSync('ip', ['-o', 'link'], { encoding: 'utf8' }).stdout).not.toContain(bridge);
  });
});

function SUITE_FAILURES(s: ReturnType<typeof latestSummary>): string[] {
  return s.checks.filter((c) => c.state !== 'passed' && c.state !== 'skipped').map((c) => `${c.suite} ${c.node}: ${c.name}: ${c.state}`);
}
