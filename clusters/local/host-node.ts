import { spawn } from 'node:child_process';
import { runSync, shSync } from '../../harness/process.ts';
import { closeSync, copyFileSync, existsSync, fstatSync, mkdirSync, openSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { waitForSshd } from '../../harness/node.ts';
import { shCommand, shQuote } from '../../harness/shell.ts';
import { processStartTime } from '../../harness/state.ts';

// A throwaway Kubernetes-style node on the harness's own host: its own mount namespace (so
// /etc/containerd, /var, /run, /usr/local/bin are private and the harness's default paths are
// real), its own network namespace for containerd and the pods' CNI bridge, an sshd on
// 127.0.0.1:<port> as the only way in, and Debian's containerd + CNI plugins. Nothing here
// mocks a node: the harness reaches it exactly as it reaches a VM.

export interface HostNodeOptions {
  name: string;
  /** A directory this node owns; removed by stop(). */
  stateDir: string;
  sshPort: number;
  /** OpenSSH public key line allowed to log in as root. */
  authorizedKey: string;
  /** The sandbox image containerd uses (must be imported before pods can start). */
  sandboxImage: string;
  /** Directory holding the containerd and ctr to run, installed as the node's /usr/local/bin ones
   *  (as image-builder installs upstream containerd); Debian's when unset. */
  containerdBinDir?: string;
  /** containerd config schema: 2 for containerd 1.6/1.7, 3 for 2.x. */
  configVersion?: 2 | 3;
  /** The pods' CNI subnet on this node (unique per node when nodes form a Kubernetes cluster). */
  podSubnet?: string;
  /** The open-file limit containerd is started with (what pods then inherit). */
  nofile?: number;
  timeoutMs?: number;
}

export const CONTAINERD_NOFILE = 8192;

/** Environment marker every process of a node inherits; its value (the state dir) is unique per node. */
export const NODE_MARKER = 'GVISOR_E2E_TESTBED_NODE';

const sh = shSync;

function baseContainerdConfig(sandboxImage: string, version: 2 | 3): string {
  // restrict_oom_score_adj: this machine forbids negative oom_score_adj.
  if (version === 3) {
    return `version = 3

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "${sandboxImage}"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "/etc/containerd/net.d"
`;
  }
  return `version = 2
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${sandboxImage}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/containerd/net.d"
`;
}

const cniConflist = (subnet: string) => JSON.stringify(
  {
    cniVersion: '1.0.0',
    name: 'gvisor-e2e',
    plugins: [
      {
        type: 'bridge',
        bridge: 'gve2e0',
        isGateway: true,
        ipMasq: false,
        ipam: { type: 'host-local', ranges: [[{ subnet }]], routes: [{ dst: '0.0.0.0/0' }], dataDir: '/var/lib/cni/networks' },
      },
    ],
  },
  null,
  2,
);

export class HostNode {
  private constructor(
    readonly name: string,
    readonly stateDir: string,
    readonly sshPort: number,
    readonly knownHostsLine: string,
    readonly sshdPid: number,
    private readonly mntNs: string,
    /** /proc/<sshdPid>/stat start time: a recycled pid is not the node's sshd. */
    private readonly sshdStart: string | undefined,
  ) {}

  /** Command that restarts this node's containerd (what systemctl does on a real node). */
  get restartCommand(): string {
    return `sh ${shQuote(join(this.stateDir, 'restart-containerd.sh'))}`;
  }

  static async start(o: HostNodeOptions): Promise<HostNode> {
    const S = o.stateDir;
    // These are remounted privately inside the node; a state dir below them would vanish there.
    for (const hidden of ['/var', '/run', '/etc/containerd', '/etc/systemd/system', '/usr/local/bin']) {
      if (S === hidden || S.startsWith(`${hidden}/`)) throw new Error(`state directory ${S} of test node ${o.name} must not be under ${hidden}, which the node remounts`);
    }
    rmSync(S, { recursive: true, force: true });
    for (const d of ['ssh', 'etc-containerd/net.d', 'etc-systemd', 'usr-local-bin', 'var/lib', 'var/log', 'var/tmp', 'var/bin']) mkdirSync(join(S, d), { recursive: true });
    symlinkSync('/run', join(S, 'var/run'));
    chmodSync(join(S, 'var/tmp'), 0o1777);
    if (o.containerdBinDir) for (const b of ['containerd', 'ctr']) copyFileSync(join(o.containerdBinDir, b), join(S, 'usr-local-bin', b));
    writeFileSync(join(S, 'etc-containerd/config.toml'), baseContainerdConfig(o.sandboxImage, o.configVersion ?? 2));
    writeFileSync(join(S, 'etc-containerd/net.d/10-gvisor-e2e.conflist'), cniConflist(o.podSubnet ?? '10.244.0.0/24'));
    sh(shCommand(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', o.name, '-f', join(S, 'ssh/host_ed25519')]));
    writeFileSync(join(S, 'ssh/authorized_keys'), `${o.authorizedKey.trim()}\n`, { mode: 0o600 });
    writeFileSync(
      join(S, 'ssh/sshd_config'),
      [
        `Port ${o.sshPort}`,
        'ListenAddress 127.0.0.1',
        `HostKey ${join(S, 'ssh/host_ed25519')}`,
        `AuthorizedKeysFile ${join(S, 'ssh/authorized_keys')}`,
        `PidFile ${join(S, 'ssh/sshd.pid')}`,
        'PermitRootLogin prohibit-password',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'StrictModes no',
        'AllowStreamLocalForwarding yes',
        'MaxSessions 64',
        'MaxStartups 64:30:128',
        `SetEnv ${NODE_MARKER}=${S}`,
        '',
      ].join('\n'),
    );
    const nofile = o.nofile ?? CONTAINERD_NOFILE;
    writeFileSync(
      join(S, 'restart-containerd.sh'),
      `#!/bin/sh
# Restarts this test node's containerd: what \`systemctl restart containerd\` does on a real node.
set -e
S=${shQuote(S)}
NODE=${shQuote(o.name)}
# Only the node's own containerd is signalled: a pid recorded before a crash may belong to
# another process by now, so the process must carry this node's marker.
ours() { tr '\\0' '\\n' <"/proc/$1/environ" 2>/dev/null | grep -qxF "${NODE_MARKER}=$S"; }
if [ -f "$S/containerd.pid" ]; then
  pid=$(cat "$S/containerd.pid")
  if ours "$pid" && kill "$pid" 2>/dev/null; then
    i=0; while ours "$pid" && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
    if ours "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
fi
# The runsc shim and runsc are looked up on PATH, as with Gardener's containerd unit.
export PATH=/var/bin/containerruntimes:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export ${NODE_MARKER}="$S"
ulimit -n ${nofile}
nsenter --net="$S/netns" setsid containerd --config /etc/containerd/config.toml >>"$S/containerd.log" 2>&1 </dev/null &
echo $! > "$S/containerd.pid"
i=0
until [ -S /run/containerd/containerd.sock ] && ctr --timeout 2s version >/dev/null 2>&1; do
  i=$((i+1)); if [ $i -gt 300 ]; then echo "timed out after 30s waiting for containerd of node $NODE to serve /run/containerd/containerd.sock" >&2; tail -20 "$S/containerd.log" >&2; exit 1; fi
  if ! kill -0 "$(cat "$S/containerd.pid")" 2>/dev/null; then echo "containerd of node $NODE exited:" >&2; tail -20 "$S/containerd.log" >&2; exit 1; fi
  sleep 0.1
done
`,
    );
    // sshd in its own user + mount namespace; everything started over SSH (containerd, shims,
    // sandboxes) inherits them. The user namespace maps root to root (all ids but one), so file
    // ownership is the host's; it exists because this machine lacks CAP_SYS_RESOURCE and the runsc
    // shim insists on oom_score_adj -999 except inside a user namespace, where it tolerates EACCES.
    const mounts = [
      // The network namespace is made (and pinned at a file) from inside, so the user namespace owns it.
      `touch ${shQuote(`${S}/netns`)} && unshare --net=${shQuote(`${S}/netns`)} true && nsenter --net=${shQuote(`${S}/netns`)} ip link set lo up`,
      'mount -t tmpfs -o mode=755 tmpfs /run',
      'mkdir -p /run/sshd /run/containerd',
      `mount --bind ${shQuote(`${S}/var`)} /var`,
      `mount --bind ${shQuote(`${S}/etc-containerd`)} /etc/containerd`,
      `mount --bind ${shQuote(`${S}/etc-systemd`)} /etc/systemd/system`,
      `mount --bind ${shQuote(`${S}/usr-local-bin`)} /usr/local/bin`,
    ].join(' && ');
    const child = spawn(
      'unshare',
      ['--user', '--mount', '--propagation', 'private', 'sh', '-c', `read go && ${mounts} && exec /usr/sbin/sshd -D -e -f ${shQuote(`${S}/ssh/sshd_config`)}`],
      { detached: true, stdio: ['pipe', 'ignore', 'pipe'], env: { ...process.env, [NODE_MARKER]: S } },
    );
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const pid = child.pid!;
    const timeoutMs = o.timeoutMs ?? 30_000;
    await mapRootUser(pid, o.name, timeoutMs);
    child.stdin!.end('go\n');
    child.unref();
    (child.stderr as unknown as { unref?: () => void }).unref?.();
    const gone = () => (existsSync(`/proc/${pid}`) ? undefined : `sshd of test node ${o.name} exited before listening on 127.0.0.1:${o.sshPort}`);
    await waitForSshd(`test node ${o.name}`, o.sshPort, timeoutMs, { gone, intervalMs: 100 }).catch((e: Error) => {
      // Nothing half-started may stay behind: the whole process group goes.
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
      throw new Error(`${e.message}${stderr ? `: ${stderr.trim()}` : ''}`);
    });
    const mntNs = readlinkSync(`/proc/${pid}/ns/mnt`);
    const sshdStart = processStartTime(pid);
    const knownHostsLine = `[127.0.0.1]:${o.sshPort} ${readFileSync(join(S, 'ssh/host_ed25519.pub'), 'utf8').trim().split(' ').slice(0, 2).join(' ')}`;
    const node = new HostNode(o.name, S, o.sshPort, knownHostsLine, pid, mntNs, sshdStart);
    // Enough to find and stop this node from another process (`down` after a crash), and to tell
    // its sshd from a later process that got the same pid.
    writeFileSync(join(S, 'node.json'), JSON.stringify({ name: o.name, sshPort: o.sshPort, knownHostsLine, sshdPid: pid, sshdStart, mntNs }), { mode: 0o600 });
    try {
      node.inNode(`sh ${shQuote(`${S}/restart-containerd.sh`)}`);
    } catch (e) {
      await node.stop();
      throw e;
    }
    return node;
  }

  /** Re-attaches to a node started by another process, from its state directory. */
  static attach(stateDir: string): HostNode | undefined {
    try {
      const r = JSON.parse(readFileSync(join(stateDir, 'node.json'), 'utf8')) as { name: string; sshPort: number; knownHostsLine: string; sshdPid: number; sshdStart?: string; mntNs: string };
      return new HostNode(r.name, stateDir, r.sshPort, r.knownHostsLine, r.sshdPid, r.mntNs, r.sshdStart);
    } catch {
      return undefined;
    }
  }

  /** True while the node's sshd (the holder of its namespaces) is alive: same pid, start time and mount namespace. */
  alive(): boolean {
    try {
      return this.sshdStart !== undefined && processStartTime(this.sshdPid) === this.sshdStart && readlinkSync(`/proc/${this.sshdPid}/ns/mnt`) === this.mntNs;
    } catch {
      return false;
    }
  }

  /**
   * Opens the node's mount namespace through its sshd, when that sshd is provably the one the node
   * started (pid and start time, before and after the open). While the descriptor is open the
   * namespace cannot be freed, so its inode cannot be given to another namespace: every process in
   * it is the node's. Undefined when that cannot be proven (sshd gone, pid recycled, an old record).
   */
  private holdNamespace(): number | undefined {
    if (this.sshdStart === undefined || processStartTime(this.sshdPid) !== this.sshdStart) return undefined;
    let fd: number | undefined;
    try {
      fd = openSync(`/proc/${this.sshdPid}/ns/mnt`, 'r');
      const same = `mnt:[${fstatSync(fd).ino}]` === this.mntNs && processStartTime(this.sshdPid) === this.sshdStart;
      if (same) return fd;
    } catch {
      /* gone meanwhile */
    }
    if (fd !== undefined) closeSync(fd);
    return undefined;
  }

  /** Runs a command inside the node's namespaces from the host (fixture set-up and fault injection only). */
  inNode(cmd: string): string {
    return runSync(['nsenter', '-t', String(this.sshdPid), '-U', '-m', '--', 'sh', '-c', cmd]);
  }

  /**
   * Gives the node's network namespace an eth0 on a host bridge (the cluster network: kubelet ↔
   * API server), with `ip`/24 and a default route via `gateway`.
   */
  attachNetwork(bridge: string, hostIfName: string, ip: string, gateway: string): void {
    const tmp = `${hostIfName}p`;
    sh(`ip link add ${hostIfName} type veth peer name ${tmp} && ip link set ${hostIfName} master ${bridge} up`);
    // Host credentials (to move the link), node mount namespace (to see the pinned netns file).
    sh(`nsenter -t ${this.sshdPid} -m -- ip link set ${tmp} netns ${join(this.stateDir, 'netns')}`);
    this.inNode(`nsenter --net=${join(this.stateDir, 'netns')} sh -c 'ip link set ${tmp} name eth0 && ip addr add ${ip}/24 dev eth0 && ip link set eth0 up && ip route add default via ${gateway}'`);
  }

  /** Starts a long-running process inside the node's namespaces (network included), logging to <stateDir>/<name>.log. */
  startDaemon(name: string, command: string): void {
    const S = this.stateDir;
    const q = (p: string) => shQuote(join(S, p));
    this.inNode(`export ${NODE_MARKER}=${shQuote(S)}; nsenter --net=${q('netns')} setsid ${command} >>${q(`${name}.log`)} 2>&1 </dev/null & echo $! > ${q(`${name}.pid`)}`);
  }

  /** Whether a daemon started by startDaemon() is still running. */
  daemonAlive(name: string): boolean {
    try {
      return existsSync(`/proc/${readFileSync(join(this.stateDir, `${name}.pid`), 'utf8').trim()}`);
    } catch {
      return false;
    }
  }

  /** The last lines of one of the node's daemon logs (for error messages). */
  logTail(name: string, lines = 5): string {
    try {
      return readFileSync(join(this.stateDir, `${name}.log`), 'utf8').trim().split('\n').slice(-lines).join(' | ');
    } catch {
      return '(no log)';
    }
  }

  /**
   * Every process that belongs to this node: the marker its processes inherit, or — only while
   * `nsHeld` proves the namespace is still the node's — its mount namespace. An inode number alone
   * is no identity: after a crash or reboot it can name another namespace.
   */
  private nodePids(nsHeld: boolean): number[] {
    const pids: number[] = [];
    for (const ent of readdirSync('/proc')) {
      if (!/^\d+$/.test(ent) || Number(ent) === process.pid) continue;
      try {
        if (nsHeld && readlinkSync(`/proc/${ent}/ns/mnt`) === this.mntNs) {
          pids.push(Number(ent));
          continue;
        }
        const env = readFileSync(`/proc/${ent}/environ`, 'latin1');
        if (env.split('\0').includes(`${NODE_MARKER}=${this.stateDir}`)) pids.push(Number(ent));
      } catch {
        /* process gone or not ours to read */
      }
    }
    return pids;
  }

  async stop(): Promise<void> {
    // SIGKILL is enough: every process of the node shares its mount namespace or inherited its
    // marker, and the namespaces (mounts, pod netns, overlay snapshots) go with the last of them.
    const ns = this.holdNamespace();
    try {
      for (let round = 0; round < 3; round++) {
        const pids = this.nodePids(ns !== undefined);
        if (pids.length === 0) break;
        for (const p of pids) {
          try {
            process.kill(p, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    } finally {
      if (ns !== undefined) closeSync(ns);
    }
    // Overlay snapshots were mounted in the node's mount namespace, which is gone with its processes.
    rmSync(this.stateDir, { recursive: true, force: true });
  }
}

/** Maps uid/gid 0..2^32-3 of the new user namespace to the same host ids, once unshare has made it. */
async function mapRootUser(pid: number, name: string, timeoutMs: number): Promise<void> {
  const ours = readlinkSync('/proc/self/ns/user');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let theirs: string | undefined;
    try {
      theirs = readlinkSync(`/proc/${pid}/ns/user`);
    } catch {
      throw new Error(`unshare for test node ${name} exited before creating its user namespace`);
    }
    if (theirs !== ours) break;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for the user namespace of test node ${name}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  writeFileSync(`/proc/${pid}/uid_map`, '0 0 4294967294\n');
  writeFileSync(`/proc/${pid}/gid_map`, '0 0 4294967294\n');
}

