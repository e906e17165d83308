import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import Table from 'cli-table3';
import { providerFor } from '../clusters/index.ts';
import type { Config, NodeConfig } from './config.ts';
import { CriClient } from './cri.ts';
import { openNode, sh } from './node.ts';
import { dockerEngine, kindBinarySource } from '../clusters/kind/index.ts';

// Says what this machine and the nodes lack for the chosen cluster, and how to get it —
// before a long run fails half way.

interface Finding {
  check: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

function which(bin: string): string | undefined {
  try {
    return execFileSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

function tool(bin: string, pkg: string, why: string): Finding {
  const at = which(bin);
  return { check: `${bin} (${why})`, ok: Boolean(at), detail: at ?? 'not found', fix: at ? undefined : `apt-get install -y ${pkg}` };
}

function file(path: string, pkg: string, why: string): Finding {
  const ok = existsSync(path);
  return { check: `${path} (${why})`, ok, detail: ok ? 'present' : 'missing', fix: ok ? undefined : `apt-get install -y ${pkg}` };
}

export async function doctor(cfg: Config): Promise<boolean> {
  const f: Finding[] = [];
  const major = Number(process.versions.node.split('.')[0]);
  f.push({ check: 'Node.js >= 20', ok: major >= 20, detail: process.version, fix: major >= 20 ? undefined : 'install Node.js 20' });
  f.push(tool('go', 'golang (or the Go toolchain)', 'builds runsc, containerd and fetches the CRI proto from Go modules'));
  f.push(file('/bin/busybox', 'busybox-static', 'test image'));
  if (cfg.cluster.provider === 'local') {
    const kinds = new Set(cfg.cluster.pools.map((p) => p.kind));
    f.push(tool('unshare', 'util-linux', 'node namespaces'), tool('nsenter', 'util-linux', 'node namespaces'));
    f.push(tool('ssh-keygen', 'openssh-client', 'node keys'), tool('sha256sum', 'coreutils', 'idempotent installs'));
    if (kinds.has('host')) {
      f.push(file('/usr/sbin/sshd', 'openssh-server', 'node access'));
      f.push(tool('runc', 'runc', 'runc pods on host nodes'));
      f.push(file('/usr/lib/cni/bridge', 'containernetworking-plugins', 'pod network'));
    }
    if (kinds.has('systemd')) f.push(tool('systemd-nspawn', 'systemd-container', 'systemd nodes'), tool('debootstrap', 'debootstrap', 'systemd node rootfs'));
  } else if (cfg.cluster.provider === 'kind') {
    f.push(tool('docker', 'docker.io', 'kind drives a Docker engine'));
    const engine = await dockerEngine();
    f.push({ check: 'Docker engine (docker info)', ok: engine.ok, detail: engine.detail, fix: engine.ok ? undefined : 'start dockerd (apt-get install docker.io), set DOCKER_HOST, or use provider local' });
    f.push({ check: 'kind CLI', ok: true, detail: kindBinarySource(cfg.cluster, which('kind')) });
    if (engine.ok) {
      const img = execFileSync('sh', ['-c', `docker image inspect --format '{{.Id}}' ${sh(cfg.cluster.nodeImage)} 2>/dev/null || true`], { encoding: 'utf8' }).trim();
      f.push({ check: `node image ${cfg.cluster.nodeImage}`, ok: true, detail: img ? `present (${img.slice(0, 19)})` : 'not in the engine: kind will try to pull it' });
    }
  } else {
    let nodes: NodeConfig[] = cfg.cluster.provider === 'nodes' ? cfg.cluster.nodes : [];
    if (cfg.cluster.provider === 'existing') {
      // The API first: it says which nodes there are; only those with SSH access are checked further.
      try {
        const all = await providerFor(cfg).up();
        f.push({ check: 'Kubernetes API: nodes of the pools', ok: true, detail: all.map((n) => `${n.name} (${n.pool})`).join(', ') });
        nodes = all.filter((n) => n.access.type !== 'api');
      } catch (e) {
        f.push({ check: 'Kubernetes API: nodes of the pools', ok: false, detail: (e as Error).message, fix: 'check cluster.kubeconfig, cluster.context and cluster.pools' });
      }
    }
    for (const n of nodes) {
      const node = openNode(n);
      try {
        const r = await node.exec('command -v ctr && command -v runc && command -v sha256sum', { timeoutMs: 20_000 });
        f.push({ check: `${n.name}: reachable, ctr/runc/sha256sum present`, ok: r.code === 0, detail: r.code === 0 ? r.stdout.trim().split('\n').join(' ') : (r.stderr || r.stdout).trim() || 'a tool is missing', fix: r.code === 0 ? undefined : 'install containerd, runc and coreutils on the node' });
        const cri = await CriClient.connect(node, n.paths.containerdSocket, 10_000);
        try {
          const v = await cri.version();
          f.push({ check: `${n.name}: CRI at ${n.paths.containerdSocket}`, ok: true, detail: `${v.runtime_name} ${v.runtime_version}` });
        } finally {
          cri.close();
        }
        const tmp = await node.exec(`test -w ${sh(n.paths.tmpDir)}`);
        f.push({ check: `${n.name}: ${n.paths.tmpDir} writable`, ok: tmp.code === 0, detail: tmp.code === 0 ? 'yes' : 'no', fix: tmp.code === 0 ? undefined : 'set paths.tmpDir' });
      } catch (e) {
        f.push({ check: `${n.name}: reachable`, ok: false, detail: (e as Error).message, fix: 'check cluster.nodes[].access' });
      } finally {
        await node.close();
      }
    }
  }
  const t = new Table({ head: ['check', 'ok', 'detail', 'how to fix'], style: { head: [], border: [] }, colWidths: [48, 5, 50, 40], wordWrap: true });
  for (const x of f) t.push([x.check, x.ok ? 'yes' : 'NO', x.detail, x.fix ?? '']);
  process.stdout.write(`${t.toString()}\n`);
  return f.every((x) => x.ok);
}
