import { execFileSync, spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLUSTER_MARKER, clusterNetwork } from '../../clusters/kube/controlplane.ts';
import { NODE_MARKER } from '../../clusters/local/host-node.ts';
import { type Config, type NodeConfig } from '../../harness/config.ts';
import { parseConfig, providerFor } from '../../clusters/index.ts';
import { kubeConfig } from '../../harness/kube.ts';
import { openNode } from '../../harness/node.ts';
import { MANAGED_LABEL } from '../../harness/sandbox.ts';
import { install, up } from '../../bin/app.ts';
import { ROOT, cli, failures, latestSummary, localCluster, scratch, stateRoot, writeConfig } from './helpers.ts';

// Faults injected into a real Kubernetes test bed (control plane processes, two host nodes with
// kubelets): each run ends within its timeout, the report says what broke and where, a product
// fault is "failed" (exit 1) while an infrastructure fault is "broken" (exit 2), and nothing the
// harness made is left behind. One cluster is shared; the test that kills a node's sshd runs last
// and ends with `down`, which must still remove everything.

const dir = scratch('faults');
const reports = join(dir, 'reports');
const name = `f${process.pid}`;
const S = join(stateRoot(), name);
const raw = localCluster(
  name,
  reports,
  { kubernetes: true, pools: [{ name: 'gvisor', kind: 'host' }, { name: 'plain', kind: 'host' }] },
  // Short timeouts: a fault must end the run quickly, not after the default minute per wait.
  { gvisor: { pools: ['gvisor'] }, timeouts: { command: '20s', container: '30s', containerdRestart: '30s' } },
);
const cfgPath = writeConfig(dir, 'config.yaml', raw);
const cfg: Config = parseConfig(JSON.stringify(raw), 'faults test config');
let nodes: NodeConfig[] = [];
let core: k8s.CoreV1Api;
let downDone = false;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** `gvisor-e2e run` in a child; `onStderr` may inject a fault when the log reaches a point. Killed after `limitMs`. */
function runCli(args: string[], onStderr: (all: string) => void = () => undefined, limitMs = 240_000): Promise<Run> {
  const t0 = Date.now();
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'bin/gvisor-e2e.ts'), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    onStderr(stderr);
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), limitMs);
  return new Promise((res) =>
    child.on('exit', (code) => {
      clearTimeout(timer);
      res({ code, stdout, stderr, ms: Date.now() - t0 });
    }),
  );
}

function pids(match: (pid: string) => boolean): number[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return match(p);
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** Processes of this cluster: node processes (marker = node state dir) and control-plane ones. */
function clusterPids(): number[] {
  return pids((p) => {
    const env = readFileSync(`/proc/${p}/environ`, 'latin1');
    return env.includes(`${NODE_MARKER}=${S}/`) || env.includes(`${CLUSTER_MARKER}=${S}\0`);
  });
}

/** Processes still running a CLI with one of our config files (vitest workers included). */
function cliPids(config: string): number[] {
  return pids((p) => Number(p) !== process.pid && readFileSync(`/proc/${p}/cmdline`, 'latin1').includes(config));
}

/** Managed namespaces left in the cluster that are not already being deleted. */
async function liveRunNamespaces(): Promise<string[]> {
  const list = await core.listNamespace({ labelSelector: `${MANAGED_LABEL}=true` });
  return list.items.filter((n) => !n.metadata?.deletionTimestamp && n.status?.phase !== 'Terminating').map((n) => n.metadata!.name!);
}

beforeAll(async () => {
  nodes = await up(cfg);
  await install(cfg, nodes);
  core = kubeConfig(providerFor(cfg).kubeconfig()!).makeApiClient(k8s.CoreV1Api);
});

afterAll(async () => {
  if (!downDone) cli(['--config', cfgPath, 'down']);
  expect(existsSync(S)).toBe(false);
  expect(clusterPids()).toEqual([]);
  expect(execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })).not.toContain(clusterNetwork(S).bridge);
  expect(readFileSync('/proc/mounts', 'utf8')).not.toContain(dir);
});

describe('security of the state it keeps', () => {
  it('the state directory is private and every key, kubeconfig and state file in it is 0600', () => {
    const mode = (p: string) => statSync(p).mode & 0o777;
    expect(mode(S).toString(8)).toBe('700');
    const secret = /(^|\/)(state\.json|node\.json|id_ed25519|known_hosts|[^/]*\.key|[^/]*kubeconfig|host_ed25519)$/;
    const found: string[] = [];
    const walk = (d: string) => {
      for (const e of readdirSync(d)) {
        const p = join(d, e);
        const st = lstatSync(p);
        if (st.isSymbolicLink() || p.includes('/var/lib/') || p.includes('/etcd/')) continue;
        if (st.isDirectory()) walk(p);
        else if (st.isFile() && secret.test(p)) {
          found.push(p);
          expect(`${p}: ${mode(p).toString(8)}`).toBe(`${p}: 600`);
        }
      }
    };
    walk(S);
    // The walk really saw the files that matter.
    for (const f of ['state.json', 'ssh/id_ed25519', 'ssh/known_hosts', 'control-plane/admin.kubeconfig', 'control-plane/pki/ca.key', 'control-plane/pki/sa.key']) {
      expect(found).toContain(join(S, f));
    }
    expect(found.some((f) => f.endsWith('/node.json'))).toBe(true);
  });
});

describe('a node whose runsc is replaced by a non-executable file', () => {
  it('runsc-installation fails naming the binary and its mode, sandbox-dmesg fails, exit 1, nothing left', async () => {
    const gv = openNode(nodes.find((n) => n.pool === 'gvisor')!);
    const runsc = '/var/bin/containerruntimes/runsc';
    try {
      const r0 = await gv.exec(`printf 'not a binary\\n' > ${runsc}.new && chmod 0644 ${runsc}.new && mv -f ${runsc}.new ${runsc}`);
      expect(r0.code, r0.stderr).toBe(0);
      const r = await runCli(['--config', cfgPath, 'run', '--keep', '--no-install', '--suite', 'runsc-installation', 'sandbox-dmesg']);
      expect(r.code, r.stderr.slice(-2000)).toBe(1);
      const s = latestSummary(reports);
      const inst = failures(s, 'runsc-installation');
      expect(inst.map((f) => f.message)).toContain(`runsc at ${runsc} on gvisor-1 is not an executable file: mode -rw-r--r-- (0644), regular file`);
      expect(inst.some((f) => /`\/var\/bin\/containerruntimes\/runsc --version` on gvisor-1 exited 126/.test(f.message))).toBe(true);
      expect(inst.every((f) => f.state === 'failed' && f.node === 'gvisor-1')).toBe(true);
      const dm = failures(s, 'sandbox-dmesg');
      expect(dm.length).toBeGreaterThan(0);
      expect(dm[0]!.state).toBe('failed');
      expect(dm[0]!.message).toMatch(/could not start a pod sandbox with runtime handler "runsc" on gvisor-1: .*runsc/);
      // Nothing leaked: the run's namespaces (and so its pods) are deleted.
      expect(await liveRunNamespaces()).toEqual([]);
      expect(cliPids(cfgPath)).toEqual([]);
      // Every pod the checks made is listed, none privileged.
      expect(s.pods.total).toBeGreaterThan(0);
      expect(s.pods.privileged).toEqual([]);
    } finally {
      await install(cfg, nodes);
      await gv.close();
    }
  });
});

describe('kube-apiserver restarted while the suites run', () => {
  it('API calls are retried: the run passes or is broken, never failed, within its timeout', async () => {
    const apiserver = () => pids((p) => readFileSync(`/proc/${p}/environ`, 'latin1').includes(`${CLUSTER_MARKER}=${S}\0`) && readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'kube-apiserver');
    const [pid] = apiserver();
    expect(pid).toBeDefined();
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    const env = Object.fromEntries(
      readFileSync(`/proc/${pid}/environ`, 'utf8')
        .split('\0')
        .filter(Boolean)
        .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
    );
    const logFd = readlinkSync(`/proc/${pid}/fd/1`);
    let restarted: Promise<void> | undefined;
    let downMs = 0;
    const restart = async () => {
      // Mid-suite: once the run has made its namespace, its pods are being created and polled.
      const t = Date.now();
      while ((await liveRunNamespaces()).length === 0) {
        if (Date.now() - t > 60_000) throw new Error('timed out after 60s waiting for the run to create its namespace');
        await new Promise((r) => setTimeout(r, 200));
      }
      process.kill(pid!, 'SIGKILL');
      const t0 = Date.now();
      await new Promise((r) => setTimeout(r, 5000));
      // Same binary, flags and environment (the cluster marker), as a supervisor would restart it.
      const out = openSync(logFd, 'a');
      spawn(argv[0]!, argv.slice(1), { detached: true, stdio: ['ignore', out, out], env }).unref();
      downMs = Date.now() - t0;
    };
    const r = await runCli(['--config', cfgPath, 'run', '--keep', '--no-install', '--suite', 'sandbox-dmesg', 'runtimeclass-scheduling'], (all) => {
      if (!restarted && all.includes('▶ run suites')) restarted = restart();
    });
    await restarted;
    expect(downMs).toBeGreaterThanOrEqual(5000);
    // The outage really met the suites' API calls, and they were retried.
    expect(r.stderr).toMatch(/(ECONNREFUSED|ECONNRESET|socket hang up)[^\n]*; retrying in \d+ms/);
    expect(apiserver().length).toBe(1);
    expect([0, 2], r.stderr.slice(-3000)).toContain(r.code);
    expect(r.ms).toBeLessThan(240_000);
    const s = latestSummary(reports);
    expect(s.checks.filter((c) => c.state === 'failed')).toEqual([]);
    if (r.code === 2) expect(s.checks.filter((c) => c.state === 'broken').every((c) => /ECONNREFUSED|ECONNRESET|timed out|after \d+ attempts/.test(c.message ?? ''))).toBe(true);
    expect(cliPids(cfgPath)).toEqual([]);
  });
});

describe('a full disk in the reports directory', () => {
  it('the run is broken (exit 2) with an error naming the path and ENOSPC; nothing stays mounted or running', async () => {
    // A short path of its own: the verdict table's column must still show it whole (the test run's
    // temp dir would lengthen it past the column's width).
    const full = mkdtempSync('/tmp/gve2e-full-');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=700', 'tmpfs', full]);
    try {
      // Fill it up: dd stops at ENOSPC.
      try {
        execFileSync('dd', ['if=/dev/zero', `of=${join(full, 'ballast')}`, 'bs=4k'], { stdio: 'ignore' });
      } catch {
        /* expected: no space left */
      }
      const p = writeConfig(dir, 'full.yaml', { ...raw, reportsDir: full });
      const r = await runCli(['--config', p, 'run', '--keep', '--no-install', '--suite', 'runsc-installation']);
      expect(r.code, r.stderr.slice(-2000)).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`cannot write the reports to ${full}[^:]*: ENOSPC \\(no space left on device\\)`));
      // The verdict itself still reached the terminal, and the suite names the file it could not write.
      expect(r.stdout).toMatch(/runsc-installation\s+│ BROKEN/);
      expect(r.stdout.replace(/[│\s]+/g, ' ')).toMatch(new RegExp(`cannot write ${full}/.*ENOSPC`));
      expect(cliPids(p)).toEqual([]);
    } finally {
      execFileSync('umount', [full]);
      rmSync(full, { recursive: true, force: true });
    }
    expect(readFileSync('/proc/mounts', 'utf8')).not.toContain(full);
  });
});

describe('an SSH connection lost under a running command', () => {
  it('is an infrastructure error, not the exit code 255 of the command', async () => {
    const n = nodes.find((x) => x.pool === 'plain')!;
    const node = openNode(n);
    try {
      expect((await node.exec('true')).code).toBe(0);
      const rec = JSON.parse(readFileSync(join(S, 'nodes', n.name, 'node.json'), 'utf8')) as { mntNs: string; sshdPid: number };
      const running = node.exec('sleep 20');
      await new Promise((r) => setTimeout(r, 1000));
      // The per-connection sshd processes, not the listener: the node stays reachable for later tests.
      const sessions = pids((p) => Number(p) !== rec.sshdPid && readlinkSync(`/proc/${p}/ns/mnt`) === rec.mntNs && readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'sshd');
      expect(sessions.length).toBeGreaterThan(0);
      for (const p of sessions) process.kill(p, 'SIGKILL');
      const e = await running.then(
        (r) => new Error(`resolved with exit ${r.code}`),
        (x: Error) => x,
      );
      expect(e.name).toBe('InfrastructureError');
      expect(e.message).toBe(`[${n.name}] SSH connection lost while running \`sleep 20\` (no exit status)`);
    } finally {
      await node.close();
    }
  });
});

describe('sshd of a node stopped while the suites run (last: the node stays unreachable)', () => {
  it('the run is broken (exit 2) naming the node and the SSH error, ends in time, and `down` still removes everything', async () => {
    const nodeJson = JSON.parse(readFileSync(join(S, 'nodes', 'gvisor-1', 'node.json'), 'utf8')) as { mntNs: string };
    const sshd = () => pids((p) => readlinkSync(`/proc/${p}/ns/mnt`) === nodeJson.mntNs && readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'sshd');
    expect(sshd().length).toBeGreaterThan(0);
    let killed = 0;
    const r = await runCli(['--config', cfgPath, 'run', '--keep', '--no-install', '--suite', 'runsc-installation'], (all) => {
      // The listener and every session: what stopping the ssh unit with its control group does.
      if (killed || !all.includes('▶ run suites')) return;
      for (const p of sshd()) {
        process.kill(p, 'SIGKILL');
        killed++;
      }
    });
    expect(killed).toBeGreaterThan(0);
    expect(r.code, r.stderr.slice(-2000)).toBe(2);
    expect(r.ms).toBeLessThan(120_000);
    const s = latestSummary(reports);
    expect(s.state).toBe('broken');
    const broken = failures(s, 'runsc-installation');
    expect(broken.length).toBeGreaterThan(0);
    expect(broken.every((f) => f.state === 'broken' && f.node === 'gvisor-1')).toBe(true);
    expect(broken[0]!.message).toMatch(/\[gvisor-1\] SSH (connection to root@127\.0\.0\.1:\d+ failed: connect ECONNREFUSED .*\(after 5 attempts\)|connection lost while running)/);
    // The node outside the fault was still checked.
    expect(s.checks.filter((c) => c.node === 'plain-1').every((c) => c.state === 'passed')).toBe(true);
    expect(cliPids(cfgPath)).toEqual([]);

    const d = cli(['--config', cfgPath, 'down']);
    downDone = true;
    expect(d.code, d.stderr).toBe(0);
    expect(existsSync(S)).toBe(false);
    expect(clusterPids()).toEqual([]);
  });
});
