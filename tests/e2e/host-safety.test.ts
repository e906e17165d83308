// Do no harm on the machine the harness runs on: a state directory it did not make is neither
// used nor removed; stopping a node signals only the node's own processes.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
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
