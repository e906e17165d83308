// Do no harm on the machine the harness runs on: a state directory it did not make is neither
// used nor removed; stopping a node signals only the node's own processes; the local control
// plane's bridge takes no subnet a route already uses, and its etcd admits no local user.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildKubernetes } from '../../clusters/kube/build.ts';
import { CLUSTER_MARKER, ControlPlane, clusterNetwork } from '../../clusters/kube/controlplane.ts';
import { HostNode, NODE_MARKER } from '../../clusters/local/host-node.ts';
import { buildContainerd } from '../../harness/binaries.ts';
import { freePort } from '../../harness/net.ts';
import { processStartTime } from '../../harness/state.ts';
import { until } from '../../harness/wait.ts';
import { cli, scratch, writeConfig } from './helpers.ts';

/** Every file and directory under `dir`, relative, sorted. */
function tree(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort();
}

describe('a stateDir the harness did not make', () => {
  it('`stateDir: .` next to the config and its keys: up, run and down exit 64 naming the file and field, and nothing is deleted', () => {
    const dir = scratch('statedir-dot');
    // What a user keeps beside a config, including directories named like the harness's own.
    writeFileSync(join(dir, 'id_ed25519'), 'not a real key\n', { mode: 0o600 });
    writeFileSync(join(dir, 'known_hosts'), '[127.0.0.1]:22 ssh-ed25519 AAAA\n');
    mkdirSync(join(dir, 'nodes', 'gvisor-1'), { recursive: true });
    writeFileSync(join(dir, 'nodes', 'gvisor-1', 'notes.txt'), 'mine\n');
    mkdirSync(join(dir, 'control-plane'));
    writeFileSync(join(dir, 'control-plane', 'plan.md'), 'mine\n');
    const cfg = writeConfig(dir, 'gvisor-e2e.yaml', {
      apiVersion: 'gvisor-e2e.dev/v1alpha1',
      kind: 'Config',
      cluster: { provider: 'local', name: `dot${process.pid}`, stateDir: '.', pools: [{ name: 'gvisor', kind: 'host' }] },
      gvisor: { pools: ['gvisor'] },
      reportsDir: scratch('statedir-dot-reports'),
    });
    const before = tree(dir);
    for (const verb of ['down', 'up', 'run']) {
      const r = cli(['--config', cfg, verb]);
      expect(r.code, `${verb}: ${r.stderr.slice(-1500)}`).toBe(64);
      expect(r.stderr).toContain(`${cfg}: cluster.stateDir: ${dir} exists and holds files but no gvisor-e2e record (state.json)`);
      expect(tree(dir)).toEqual(before);
    }
    expect(readFileSync(join(dir, 'nodes', 'gvisor-1', 'notes.txt'), 'utf8')).toBe('mine\n');
    expect(existsSync(join(dir, 'state.json'))).toBe(false);
  });
});

/** A process of this test in a mount namespace of its own (not a node's, no marker): `unshare` execs `sleep` in place. */
async function unrelatedInOwnMountNs(): Promise<{ pid: number; ns: string; start: string; stop: () => void }> {
  const mine = readlinkSync('/proc/self/ns/mnt');
  const child = spawn('unshare', ['--mount', '--propagation', 'private', 'sleep', 'infinity'], { stdio: 'ignore' });
  const pid = child.pid!;
  await until(`pid ${pid} to be sleep in its own mount namespace`, 10_000, () => {
    try {
      return readlinkSync(`/proc/${pid}/ns/mnt`) !== mine && readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'sleep';
    } catch {
      return false;
    }
  });
  return { pid, ns: readlinkSync(`/proc/${pid}/ns/mnt`), start: processStartTime(pid)!, stop: () => child.kill('SIGKILL') };
}

describe('stopping a host node signals only its own processes', () => {
  it("a node record whose mount namespace inode now names another namespace (sshd pid recycled, or an old record without its start time): the process there survives", async () => {
    const other = await unrelatedInOwnMountNs();
    try {
      const records = [
        // The pid is alive but is not the sshd that was recorded (another start time).
        { sshdPid: other.pid, sshdStart: '1', mntNs: other.ns },
        // A record from before start times were kept, whose sshd is gone.
        { sshdPid: 2 ** 22 + 1, mntNs: other.ns },
      ];
      for (const [i, r] of records.entries()) {
        const S = join(scratch('lookalike-node'), `n${i}`);
        mkdirSync(S);
        writeFileSync(join(S, 'node.json'), JSON.stringify({ name: `lookalike-${i}`, sshPort: 1, knownHostsLine: '', ...r }));
        const node = HostNode.attach(S)!;
        expect(node.alive()).toBe(false);
        await node.stop();
        expect(processStartTime(other.pid), `record ${i}`).toBe(other.start);
        expect(readlinkSync(`/proc/${other.pid}/ns/mnt`)).toBe(other.ns);
      }
    } finally {
      other.stop();
    }
  });

  it('a real node: every process in its mount namespace goes (also one without the marker), an unrelated one stays', async () => {
    const containerd = await buildContainerd();
    const S = join(scratch('host-node-stop'), 'node');
    const keyDir = scratch('host-node-key');
    spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(keyDir, 'id')]);
    const node = await HostNode.start({
      name: 'stop-test',
      stateDir: S,
      sshPort: await freePort(),
      authorizedKey: readFileSync(join(keyDir, 'id.pub'), 'utf8'),
      sandboxImage: 'registry.k8s.io/pause:3.10',
      containerdBinDir: containerd.dir,
    });
    const other = await unrelatedInOwnMountNs();
    // Joined to the node's mount namespace from the host, without the node's environment.
    const joined = spawn('nsenter', ['-t', String(node.sshdPid), '-U', '-m', '--', 'sleep', 'infinity'], { stdio: 'ignore', env: { PATH: process.env.PATH } });
    try {
      const nodeNs = readlinkSync(`/proc/${node.sshdPid}/ns/mnt`);
      await until('the joined sleep to be in the node', 10_000, () => {
        try {
          return readlinkSync(`/proc/${joined.pid}/ns/mnt`) === nodeNs && readFileSync(`/proc/${joined.pid}/comm`, 'utf8').trim() === 'sleep';
        } catch {
          return false;
        }
      });
      expect(readFileSync(`/proc/${joined.pid}/environ`, 'latin1')).not.toContain(NODE_MARKER);
      expect(node.alive()).toBe(true);
      await node.stop();
      const inNode = readdirSync('/proc').filter((p) => {
        try {
          return /^\d+$/.test(p) && (readlinkSync(`/proc/${p}/ns/mnt`) === nodeNs || readFileSync(`/proc/${p}/environ`, 'latin1').includes(`${NODE_MARKER}=${S}`));
        } catch {
          return false;
        }
      });
      // A killed child of ours stays a zombie (no /proc/<pid>/ns) until reaped; none may be alive.
      expect(inNode).toEqual([]);
      expect(processStartTime(other.pid)).toBe(other.start);
      expect(existsSync(S)).toBe(false);
    } finally {
      other.stop();
      joined.kill('SIGKILL');
    }
  });
});

const ip = (...args: string[]) => execFileSync('ip', args, { encoding: 'utf8' });
const routes = () => JSON.parse(ip('-j', '-4', 'route', 'show', 'table', 'all')) as { dst: string; dev?: string }[];

/** Processes carrying the cluster's marker (the control plane of state dir S). */
function clusterProcs(S: string): { pid: number; comm: string; argv: string[] }[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .flatMap((p) => {
      try {
        if (!readFileSync(`/proc/${p}/environ`, 'latin1').split('\0').includes(`${CLUSTER_MARKER}=${S}`)) return [];
        return [{ pid: Number(p), comm: readFileSync(`/proc/${p}/comm`, 'utf8').trim(), argv: readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0') }];
      } catch {
        return [];
      }
    });
}

type Answer = { status: number; body: string } | { error: string };
/** One GET; resolves to the answer or to the connection's error, never throws. */
function get(url: string, tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer }): Promise<Answer> {
  return new Promise((res) => {
    const opts = { timeout: 10_000, ...(tls ? { ...tls, rejectUnauthorized: Boolean(tls.ca) } : {}) };
    const req = (url.startsWith('https:') ? httpsRequest : httpRequest)(url, opts, (r) => {
      let body = '';
      r.on('data', (d) => (body += d));
      r.on('end', () => res({ status: r.statusCode ?? 0, body }));
      r.on('error', (e) => res({ error: e.message }));
    });
    req.on('error', (e) => res({ error: e.message }));
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end();
  });
}

describe('the local control plane, while it is up', () => {
  const S = join(scratch('cp-safety'), 'cluster');
  const first = clusterNetwork(S);
  // Another link of this machine already has the subnet the cluster would pick first.
  const squatter = `gvsq${process.pid % 100000}`;
  let cp: ControlPlane | undefined;

  beforeAll(async () => {
    ip('link', 'add', squatter, 'type', 'bridge');
    ip('addr', 'add', `${first.prefix}.200/24`, 'dev', squatter);
    ip('link', 'set', squatter, 'up');
    cp = await ControlPlane.start(S, await buildKubernetes());
  });

  afterAll(() => {
    try {
      if (existsSync(join(S, 'control-plane'))) ControlPlane.stop(S);
    } finally {
      ip('link', 'del', squatter);
    }
    expect(clusterProcs(S)).toEqual([]);
  });

  it("its bridge takes a /24 no route of this machine overlaps, and the other link's route stays as it was", () => {
    expect(cp!.net.prefix).not.toBe(first.prefix);
    const r = routes();
    expect(r.filter((x) => x.dev === first.bridge && x.dst.includes('/'))).toEqual([expect.objectContaining({ dst: `${cp!.net.prefix}.0/24` })]);
    expect(r.filter((x) => x.dst === `${first.prefix}.0/24`)).toEqual([expect.objectContaining({ dev: squatter })]);
    expect(r.filter((x) => x.dev !== first.bridge && x.dst.startsWith(`${cp!.net.prefix}.`))).toEqual([]);
  });

  it('etcd refuses a client without its certificate (plain HTTP, or TLS without a client certificate); the API server, with one, works', async () => {
    const etcd = clusterProcs(S).find((p) => p.comm === 'etcd');
    expect(etcd).toBeDefined();
    const url = etcd!.argv.find((a) => a.startsWith('--listen-client-urls='))!.split('=')[1]!;
    const port = new URL(url).port;
    for (const attempt of [await get(`http://127.0.0.1:${port}/version`), await get(`https://127.0.0.1:${port}/version`, {})]) {
      // A TLS server answers plain HTTP with 400; without a client certificate the handshake is refused.
      if ('status' in attempt) {
        expect(attempt.status).not.toBe(200);
        expect(attempt.body).not.toContain('etcdserver');
      } else {
        expect(attempt.error).toMatch(/certificate|socket hang up|ECONNRESET|alert/i);
      }
    }
    // With the API server's client certificate (root-only files) the same port answers.
    const creds = JSON.parse(readFileSync(join(S, 'control-plane', 'etcd.json'), 'utf8')) as { ca: string; cert: string; key: string };
    const ok = await get(`https://127.0.0.1:${port}/version`, { ca: readFileSync(creds.ca), cert: readFileSync(creds.cert), key: readFileSync(creds.key) });
    expect(ok).toMatchObject({ status: 200, body: expect.stringContaining('etcdserver') });
    for (const f of [creds.key, join(S, 'control-plane', 'etcd-pki', 'ca.key')]) expect(statSync(f).mode & 0o077).toBe(0);
    const [code] = await cp!.get('/api/v1/namespaces/default');
    expect(code).toBe(200);
  });
});

describe('the local control plane when every candidate subnet is taken', () => {
  it('stops before starting anything, with an error naming the overlapping route', async () => {
    const S = join(scratch('cp-nosubnet'), 'cluster');
    const squatter = `gvsw${process.pid % 100000}`;
    ip('link', 'add', squatter, 'type', 'bridge');
    try {
      ip('link', 'set', squatter, 'up');
      ip('route', 'add', '10.217.0.0/16', 'dev', squatter);
      const started = ControlPlane.start(S, await buildKubernetes());
      await expect(started).rejects.toThrow(new RegExp(`no free /24 in 10.217.20.0-10.217.219.0 for the local cluster's bridge ${clusterNetwork(S).bridge}: routes on this machine overlap every one \\(10.217.0.0/16 dev ${squatter}`));
      expect(ip('-o', 'link', 'show')).not.toContain(clusterNetwork(S).bridge);
      expect(clusterProcs(S)).toEqual([]);
    } finally {
      if (existsSync(join(S, 'control-plane'))) ControlPlane.stop(S);
      ip('link', 'del', squatter);
    }
  });
});
