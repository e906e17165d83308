import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { until } from '../../harness/wait.ts';

// A Docker engine of the test's own: Debian's dockerd with its own containerd, data-root,
// exec-root, pidfile and socket, in a network, mount and PID namespace of its own (so its bridges,
// iptables, overlay mounts and processes never touch the host's, and vanish with the namespace).
// Reach it with DOCKER_HOST=<host>. stop() ends the namespace's processes and removes the dir.

export interface PrivateDockerd {
  /** unix://…/docker.sock, for DOCKER_HOST. */
  host: string;
  /** With `link`: the engine's address on a veth pair to this netns (publish ports there, e.g. kind's apiServerAddress). */
  address?: string;
  dir: string;
  /** dockerd's log (for a failing test's message). */
  log(): string;
  stop(): Promise<void>;
}

export function dockerdAvailable(): string | undefined {
  for (const bin of ['dockerd', 'containerd', 'unshare']) {
    try {
      execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
    } catch {
      return `${bin} not found (apt-get install docker.io)`;
    }
  }
  return undefined;
}

// Capability names by number (linux/capability.h), to name what this machine's bounding set lacks.
const CAPS = [
  'CHOWN', 'DAC_OVERRIDE', 'DAC_READ_SEARCH', 'FOWNER', 'FSETID', 'KILL', 'SETGID', 'SETUID', 'SETPCAP', 'LINUX_IMMUTABLE',
  'NET_BIND_SERVICE', 'NET_BROADCAST', 'NET_ADMIN', 'NET_RAW', 'IPC_LOCK', 'IPC_OWNER', 'SYS_MODULE', 'SYS_RAWIO', 'SYS_CHROOT',
  'SYS_PTRACE', 'SYS_PACCT', 'SYS_ADMIN', 'SYS_BOOT', 'SYS_NICE', 'SYS_RESOURCE', 'SYS_TIME', 'SYS_TTY_CONFIG', 'MKNOD', 'LEASE',
  'AUDIT_WRITE', 'AUDIT_CONTROL', 'SETFCAP', 'MAC_OVERRIDE', 'MAC_ADMIN', 'SYSLOG', 'WAKE_ALARM', 'BLOCK_SUSPEND', 'AUDIT_READ',
  'PERFMON', 'BPF', 'CHECKPOINT_RESTORE',
];

/** Capabilities docker grants privileged containers that this process's bounding set lacks (here: CAP_SYS_RESOURCE). */
export function missingCapabilities(): string[] {
  const bnd = BigInt(`0x${/^CapBnd:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]}`);
  return CAPS.map((c, i) => ((bnd >> BigInt(i)) & 1n ? '' : `CAP_${c}`)).filter(Boolean);
}

/**
 * A runc wrapper that drops the capabilities this machine cannot grant from a container's config
 * (create/run) and an exec's process spec: docker gives `--privileged` containers (every kind node,
 * and every `docker exec --privileged` kind runs) all capabilities, and runc fails with "unable to
 * apply caps: operation not permitted" when one is outside the bounding set.
 */
function writeCapDropRuntime(path: string, caps: string[]): void {
  // Docker writes compact JSON ("CAP_X","CAP_Y"): removing a quoted name with one comma keeps it valid.
  const sed = caps.map((c) => `s/"${c}",//g; s/,"${c}"//g; s/"${c}"//g`).join('; ');
  writeFileSync(
    path,
    [
      '#!/bin/sh',
      'prev=; bundle=; proc=',
      'for a in "$@"; do',
      '  case "$prev" in --bundle|-b) bundle=$a;; --process|-p) proc=$a;; esac',
      '  case "$a" in --bundle=*) bundle=${a#--bundle=};; --process=*) proc=${a#--process=};; esac',
      '  prev=$a',
      'done',
      `[ -z "$bundle" ] || [ ! -f "$bundle/config.json" ] || sed -i '${sed}' "$bundle/config.json"`,
      `[ -z "$proc" ] || [ ! -f "$proc" ] || sed -i '${sed}' "$proc"`,
      'exec runc "$@"',
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
}

/** A containerd config of its own (root, state, socket), without the CRI plugin: a daemon that touches nothing of the host's. */
export function writePrivateContainerdConfig(file: string, o: { root: string; state: string; address: string }): void {
  writeFileSync(
    file,
    ['version = 2', `root = "${o.root}"`, `state = "${o.state}"`, 'disabled_plugins = ["io.containerd.grpc.v1.cri"]', '[grpc]', `  address = "${o.address}"`, '[ttrpc]', `  address = "${o.address}.ttrpc"`, ''].join('\n'),
  );
}

export interface PrivateDockerdOptions {
  extraArgs?: string[];
  /**
   * Run in a user namespace that maps root to root (all ids but one), as the local provider's host
   * nodes do: this machine lacks CAP_SYS_RESOURCE, and containerd (a kind node's, the runsc shim)
   * tolerates a refused oom_score_adj only inside a user namespace. kind's entrypoint then turns on
   * restrict_oom_score_adj by itself.
   */
  userns?: boolean;
  /** A veth pair between this netns and the engine's, so ports it publishes on `address` are reachable from here. */
  link?: boolean;
}

export async function startPrivateDockerd(opts: PrivateDockerdOptions = {}): Promise<PrivateDockerd> {
  // Short path: unix socket paths are limited to 107 bytes.
  const dir = mkdtempSync('/tmp/gve2e-dockerd-');
  const extraArgs = [...(opts.extraArgs ?? [])];
  const missing = missingCapabilities();
  if (missing.length > 0) {
    writeCapDropRuntime(join(dir, 'runc-capdrop'), missing);
    extraArgs.push('--add-runtime', `capdrop=${dir}/runc-capdrop`, '--default-runtime', 'capdrop');
  }
  const sock = join(dir, 'docker.sock');
  const ctrSock = join(dir, 'containerd.sock');
  // dockerd needs containerd's image/content/runtime services, not its CRI server.
  writePrivateContainerdConfig(join(dir, 'containerd.toml'), { root: `${dir}/containerd-root`, state: `${dir}/containerd-state`, address: ctrSock });
  const link = opts.link ? freeLink() : undefined;
  const script = [
    'set -e',
    // The parent configures the host end of the link and says so on stdin.
    ...(link ? ['read linked', `ip addr add ${link.inner}/30 dev eth-host`, 'ip link set eth-host up'] : []),
    // Mounts made inside (overlay2 layers, netns files) stay inside.
    'mount --make-rprivate /',
    'ip link set lo up',
    `containerd --config ${dir}/containerd.toml >${dir}/containerd.log 2>&1 &`,
    `i=0; while [ ! -S ${ctrSock} ]; do i=$((i+1)); [ $i -lt 100 ] || { echo "containerd did not start" >&2; exit 1; }; sleep 0.1; done`,
    `exec dockerd --host unix://${sock} --containerd ${ctrSock} --data-root ${dir}/data --exec-root ${dir}/exec --pidfile ${dir}/docker.pid ` +
      `--storage-driver overlay2 --iptables=false --ip6tables=false --ip-masq=false --bridge=none --userland-proxy=${link ? 'true' : 'false'} ${extraArgs.join(' ')} >${dir}/dockerd.log 2>&1`,
  ].join('\n');
  const nsArgs = ['--net', '--mount', '--pid', '--fork', '--mount-proc'];
  // A PID namespace too: shims daemonize out of our process group, and node containers run systemd;
  // when dockerd (the namespace's init) exits, the kernel ends every process left in it.
  // In a user namespace, the other namespaces are made from inside it (after the parent mapped it), so it owns them.
  const child: ChildProcess = opts.userns
    ? spawn('unshare', ['--user', 'sh', '-c', `read mapped && exec unshare ${nsArgs.join(' ')} sh -c "$1"`, 'sh', script], { stdio: ['pipe', 'ignore', 'ignore'], detached: true })
    : spawn('unshare', [...nsArgs, 'sh', '-c', script], { stdio: [link ? 'pipe' : 'ignore', 'ignore', 'ignore'], detached: true });
  let exited: string | undefined;
  child.on('exit', (code, sig) => {
    exited = `exited ${code ?? sig}`;
  });
  child.stdin?.on('error', () => {});
  const logOf = (f: string) => (existsSync(join(dir, f)) ? readFileSync(join(dir, f), 'utf8') : '');
  const stop = async () => {
    // Containers first, the way docker removes them (best effort: the namespace is the backstop).
    try {
      const ids = execFileSync('docker', ['-H', `unix://${sock}`, 'ps', '-aq'], { encoding: 'utf8', timeout: 20_000 }).split('\n').filter(Boolean);
      if (ids.length) execFileSync('docker', ['-H', `unix://${sock}`, 'rm', '-f', ...ids], { stdio: 'ignore', timeout: 60_000 });
    } catch {
      /* dockerd already gone */
    }
    try {
      process.kill(-child.pid!, 'SIGTERM');
    } catch {
      /* already gone */
    }
    await until('the private dockerd and its containerd to exit', 20_000, () => exited !== undefined || !alive(child.pid!)).catch(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
    });
    // Processes of the group that outlive the leader (containerd) are ended too.
    await until('every process of the private dockerd group to exit', 10_000, () => groupEmpty(child.pid!));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    if (opts.userns) {
      await until('the private dockerd\'s user namespace', 10_000, () => readlinkOr(`/proc/${child.pid}/ns/user`) !== readlinkOr('/proc/self/ns/user'), 20);
      writeFileSync(`/proc/${child.pid}/uid_map`, '0 0 4294967294\n');
      writeFileSync(`/proc/${child.pid}/gid_map`, '0 0 4294967294\n');
      child.stdin!.write('mapped\n');
    }
    if (link) {
      // The namespaces' first process is the one child of unshare --fork.
      let inner = '';
      await until('the private dockerd\'s network namespace', 10_000, () => {
        inner = readFileOr(`/proc/${child.pid}/task/${child.pid}/children`).trim().split(/\s+/)[0] ?? '';
        return inner !== '' && readlinkOr(`/proc/${inner}/ns/net`) !== readlinkOr('/proc/self/ns/net');
      }, 20);
      execFileSync('ip', ['link', 'add', link.name, 'type', 'veth', 'peer', 'name', 'eth-host', 'netns', inner]);
      execFileSync('ip', ['addr', 'add', `${link.outer}/30`, 'dev', link.name]);
      execFileSync('ip', ['link', 'set', link.name, 'up']);
      child.stdin!.write('linked\n');
    }
    await until(
      () => `the private dockerd to answer on ${sock} (${exited ?? 'running'}; dockerd.log: ${logOf('dockerd.log').slice(-600)}; containerd.log: ${logOf('containerd.log').slice(-300)})`,
      60_000,
      () => {
        if (exited) throw new Error(`private dockerd ${exited}: ${logOf('dockerd.log').slice(-800)} ${logOf('containerd.log').slice(-400)}`);
        try {
          execFileSync('docker', ['-H', `unix://${sock}`, 'info', '--format', '{{.ServerVersion}}'], { stdio: 'ignore', timeout: 10_000 });
          return true;
        } catch {
          return false;
        }
      },
      250,
    );
  } catch (e) {
    await stop();
    throw e;
  }
  return { host: `unix://${sock}`, address: link?.inner, dir, log: () => logOf('dockerd.log'), stop };
}

/** A /30 in 10.252.0.0/16 that no interface here uses, and a veth name (gve2e-…, what leftover checks look for). */
function freeLink(): { name: string; outer: string; inner: string } {
  const used = execFileSync('ip', ['-o', '-4', 'addr'], { encoding: 'utf8' });
  for (let i = 0; i < 64; i++) {
    const n = Math.floor(Math.random() * 16384);
    const base = `10.252.${n >> 6}.${(n & 63) * 4}`;
    const [a, b, c, d] = base.split('.').map(Number) as [number, number, number, number];
    if (used.includes(` ${a}.${b}.${c}.${d + 1}/`) || used.includes(` ${a}.${b}.${c}.${d + 2}/`)) continue;
    return { name: `gve2e-dk${n.toString(36)}`, outer: `${a}.${b}.${c}.${d + 1}`, inner: `${a}.${b}.${c}.${d + 2}` };
  }
  throw new Error('no free /30 in 10.252.0.0/16 for the private dockerd link');
}

function readlinkOr(p: string): string {
  try {
    return readlinkSync(p);
  } catch {
    return '';
  }
}

function readFileOr(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** No process left in the process group `pgid`. */
export function groupEmpty(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return false;
  } catch {
    return true;
  }
}
