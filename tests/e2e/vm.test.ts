import { spawnSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { vmDoctor, vmNodeConfig } from '../../clusters/vm/index.ts';
import { qemuProcesses, Vm } from '../../fixtures/vm/qemu.ts';
import { loadConfig, parseConfig } from '../../clusters/index.ts';
import { SshNode } from '../../harness/node.ts';
import { cli, type CliResult, failures, latestSummary, ROOT, scratch, writeConfig } from './helpers.ts';

// The vm provider on a real VM: Debian bookworm booted by qemu (TCG here: /dev/kvm is PVM), with
// Debian's containerd 1.6 — too old for the runsc shim. `run` provisions containerd 2.x under
// systemd, installs gVisor and runs the node-level suites over SSH; a real systemd applies the
// LimitNOFILE drop-in, so containerd runs with 1048576 for real (no container host caps it). A
// broken VM fails with the cause named; `down` puts the VM back as it was; stopping the VM leaves
// no qemu process and no file behind.

const dir = scratch('vm');
const reports = join(dir, 'reports');
const NODE_SUITES = ['runsc-installation', 'sandbox-dmesg', 'net-raw', 'limit-nofile'];
let vm: Vm | undefined;
let cfgPath = '';
let raw: { cluster: { hosts: Record<string, unknown>[] } & Record<string, unknown> } & Record<string, unknown>;
let ssh: SshNode;
/** What the VM looked like before the harness touched it. */
let before: Record<string, string> = {};

async function out(cmd: string): Promise<string> {
  const r = await ssh.exec(cmd, { timeoutMs: 60_000 });
  return r.stdout.trim();
}

/** What `down` must bring back: containerd's version, config, unit files, and the paths the harness may create. */
async function snapshot(): Promise<Record<string, string>> {
  return {
    containerd: await out('containerd --version'),
    active: await out('systemctl is-active containerd'),
    config: await out('sha256sum /etc/containerd/config.toml'),
    units: await out('ls -d /etc/systemd/system/containerd.service /etc/systemd/system/containerd.service.d 2>&1'),
    files: await out('ls -d /usr/local/bin/* /usr/local/sbin/* /opt/* /etc/cni/net.d/* /var/lib/gvisor-e2e /run/gvisor-e2e /var/bin /etc/containerd/* 2>/dev/null; true'),
    run: await out('ls -A /run/containerd'),
    mounts: await out("findmnt -rn -o TARGET | grep -E 'containerd|gvisor|runsc'; true"),
  };
}

/** The CLI with a longer leash than cli()'s 10 minutes: under TCG one `run` took 5-6.5 min on a busy 2-core machine. */
function run(args: string[]): CliResult {
  const t0 = Date.now();
  const p = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'bin/gvisor-e2e.ts'), '--config', cfgPath, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 1_200_000 });
  const r = { code: p.status ?? -1, stdout: p.stdout, stderr: p.stderr };
  const secs = ((Date.now() - t0) / 1000).toFixed(0);
  console.log(`gvisor-e2e ${args.join(' ')} → exit ${r.code} in ${secs}s`);
  return r;
}

beforeAll(async () => {
  vm = await Vm.boot({ name: 'vm-1', onProgress: (m) => console.log(m) });
  raw = {
    apiVersion: 'gvisor-e2e.dev/v1alpha1',
    kind: 'Config',
    cluster: {
      provider: 'vm',
      name: 'vm-e2e',
      hosts: [{ name: 'vm-1', pool: 'gvisor', address: '127.0.0.1', port: vm.sshPort, privateKeyPath: vm.privateKeyPath, knownHostsPath: vm.knownHostsPath, osFamily: 'debian' }],
    },
    gvisor: { pools: ['gvisor'], configFlags: { 'net-raw': 'false' } },
    containerd: { enableLimitNoFile: true },
    // TCG emulates every instruction: a sandbox boot is seconds, not milliseconds.
    timeouts: { command: '120s', container: '240s', containerdRestart: '120s' },
    reportsDir: reports,
  };
  cfgPath = writeConfig(dir, 'vm.yaml', raw);
  const cfg = parseConfig(JSON.stringify(raw), 'vm test config');
  if (cfg.cluster.provider !== 'vm') throw new Error('unreachable');
  ssh = new SshNode(vmNodeConfig(cfg.cluster.hosts[0]!));
  before = await snapshot();
}, 1_200_000);

afterAll(async () => {
  await ssh?.close();
  await vm?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('vm provider on a qemu VM', () => {
  it('the VM is what the test needs: real systemd as PID 1, Debian\'s containerd 1.6, a pinned host key', async () => {
    expect(await out('cat /proc/1/comm')).toBe('systemd');
    expect(before.containerd).toMatch(/ 1\.6\.\d+/);
    expect(before.active).toBe('active');
    expect(vm!.hostKeyFingerprint).toMatch(/^SHA256:/);
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
      [{ ...host, knownHostsPath: join(dir, 'empty_known_hosts') }, 'pinned host key', `empty_known_hosts has no key for [127.0.0.1]:${vm!.sshPort}`],
      [{ ...host, knownHostsPath: undefined, hostKeyFingerprint: `SHA256:${'A'.repeat(43)}` }, `SSH root@127.0.0.1:${vm!.sshPort}`, `it presented ${vm!.hostKeyFingerprint}, expected SHA256:${'A'.repeat(43)}`],
    ] as const;
    for (const [h, check, why] of variants) {
      const bad = writeConfig(dir, 'vm-bad.yaml', { ...raw, cluster: { ...raw.cluster, hosts: [h] } });
      expect(cli(['--config', bad, 'doctor']).code).toBe(2);
      const c = loadConfig(bad);
      if (c.cluster.provider !== 'vm') throw new Error('unreachable');
      const f = (await vmDoctor(c.cluster)).find((x) => x.check === `vm-1: ${check}`);
      expect(f?.ok).toBe(false);
      expect(f?.detail).toContain(why);
    }
  });

  it('run provisions containerd 2.x, installs gVisor and the node-level suites pass; containerd runs with LimitNOFILE=1048576 for real', () => {
    const r = run(['run', '--suite', ...NODE_SUITES]);
    const s = latestSummary(reports);
    expect(failures(s, 'runsc-installation').concat(failures(s, 'sandbox-dmesg'), failures(s, 'net-raw'), failures(s, 'limit-nofile'))).toEqual([]);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(r.stderr).toMatch(/containerd 1\.6\.\d+\S* is too old for the runsc shim/);
    for (const suite of NODE_SUITES) expect(s.suites.find((x) => x.name === suite)?.state, suite).toBe('passed');
    // Under a real systemd nothing caps the drop-in: every limit-nofile check ran (none skipped) and passed.
    const nofile = s.checks.filter((c) => c.suite === 'limit-nofile');
    expect(nofile.map((c) => c.state)).toEqual(nofile.map(() => 'passed'));
    expect(nofile.length).toBe(4);
  }, 1_200_000);

  it('the evidence on the VM: containerd 2.x under systemd with 1048576 open files, soft and hard', async () => {
    expect(await out('containerd --version')).toMatch(/ v2\.\d+\.\d+/);
    expect(await out('systemctl show containerd -p LimitNOFILE')).toBe('LimitNOFILE=1048576');
    const limits = await out('grep "Max open files" /proc/"$(systemctl show containerd -p MainPID --value)"/limits');
    expect(limits).toMatch(/^Max open files\s+1048576\s+1048576\s+files$/);
  });

  it('a broken VM fails with the cause named: net-raw flipped on the node, the drop-in removed', async () => {
    await ssh.exec(`sed -i 's/net-raw = "false"/net-raw = "true"/' /etc/containerd/runsc.toml && rm /etc/systemd/system/containerd.service.d/limit-nofile.conf && systemctl daemon-reload`);
    const r = run(['run', '--no-install', '--suite', 'net-raw', 'limit-nofile']);
    expect(r.code).toBe(1);
    const s = latestSummary(reports);
    const netRaw = failures(s, 'net-raw');
    expect(netRaw).toHaveLength(1);
    expect(netRaw[0]!.message).toMatch(/net-raw is off but ping opened a raw socket in the sandbox on vm-1 .*has net-raw = "true"/);
    const nofile = failures(s, 'limit-nofile').map((f) => f.message);
    expect(nofile).toContainEqual(expect.stringMatching(/limit-nofile\.conf is missing on vm-1: expected LimitNOFILE=1048576/));
  }, 1_200_000);

  it('down removes what the installer and the provider added and brings Debian\'s containerd 1.6 back', async () => {
    const r = run(['down']);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expect(await snapshot()).toEqual(before);
    expect(await out('test -e /var/lib/gvisor-e2e && echo present || echo gone')).toBe('gone');
  }, 600_000);

  it('stopping the VM leaves no qemu process and no file on this machine', async () => {
    const work = vm!.workDir;
    expect(qemuProcesses(work)).toHaveLength(1);
    await ssh.close();
    await vm!.stop();
    expect(qemuProcesses(work)).toEqual([]);
    expect(existsSync(work)).toBe(false);
    vm = undefined;
  });
});
