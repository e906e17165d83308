import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { InfrastructureError } from '../../harness/errors.ts';
import { until } from '../../harness/wait.ts';
import { log } from '../../harness/log.ts';
import { runSync, shSync } from '../../harness/process.ts';
import { withClusterLock } from '../../harness/state.ts';
import type { KubeBinaries } from './build.ts';
import { Pki, writeKubeconfig } from './pki.ts';
import { freePort } from '../../harness/net.ts';

// A Kubernetes control plane as plain processes on this machine, like Kubernetes' own
// hack/local-up-cluster.sh: etcd, kube-apiserver, kube-controller-manager, kube-scheduler. The API
// server listens on a host bridge that the nodes' network namespaces join, so kubelets reach it and
// it reaches them (logs, exec). Every process carries a marker so `down` finds them after a crash.

export const CLUSTER_MARKER = 'GVISOR_E2E_CLUSTER';

export interface ClusterNetwork {
  bridge: string;
  /** First three octets, e.g. "10.217.42": gateway .1, nodes .10 and up. */
  prefix: string;
  /** The API server's address when it serves on a network the cluster does not own (no bridge). */
  address?: string;
}

/** The bridge name and first-choice /24 derived from the cluster's state dir, so concurrent clusters do not collide. */
export function clusterNetwork(stateDir: string): ClusterNetwork {
  const h = createHash('sha256').update(stateDir).digest();
  return { bridge: `gve2e${h.toString('hex').slice(0, 6)}`, prefix: `10.217.${20 + (h[0]! % 200)}` };
}

interface Route {
  dst: string;
  dev?: string;
  type?: string;
  table?: string;
}

/** Every IPv4 route of this machine, all tables (local addresses and broadcast routes included). */
function hostRoutes(): Route[] {
  return JSON.parse(runSync(['ip', '-j', '-4', 'route', 'show', 'table', 'all'])) as Route[];
}

function ipv4(a: string): number {
  return a.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}

/** Whether two IPv4 prefixes share an address (the shorter contains the other's network). */
function overlaps(a: string, b: string): boolean {
  const [aa, al = '32'] = a.split('/');
  const [ba, bl = '32'] = b.split('/');
  const bits = Math.min(Number(al), Number(bl));
  const div = 2 ** (32 - bits);
  return Math.floor(ipv4(aa!) / div) === Math.floor(ipv4(ba!) / div);
}

/**
 * The cluster's network: the state dir's own /24 unless a route of this machine overlaps it,
 * else the next free one in 10.217.20–219.0/24. A default route overlaps nothing (a more specific
 * one wins), every other route does: adding the bridge would take that traffic away from it.
 */
export function chooseClusterNetwork(stateDir: string, routes: Route[] = hostRoutes()): ClusterNetwork {
  const first = clusterNetwork(stateDir);
  const taken = routes.filter((r) => r.dst !== 'default' && !r.dst.endsWith('/0') && !(r.dev ?? '').startsWith(first.bridge));
  const start = Number(first.prefix.split('.')[2]) - 20;
  for (let i = 0; i < 200; i++) {
    const prefix = `10.217.${20 + ((start + i) % 200)}`;
    if (!taken.some((r) => overlaps(r.dst, `${prefix}.0/24`))) return { bridge: first.bridge, prefix };
  }
  const inRange = taken.filter((r) => overlaps(r.dst, '10.217.0.0/16')).map((r) => `${r.dst}${r.dev ? ` dev ${r.dev}` : ''}${r.table && r.table !== 'main' ? ` table ${r.table}` : ''}`);
  throw new InfrastructureError(
    `no free /24 in 10.217.20.0-10.217.219.0 for the local cluster's bridge ${first.bridge}: routes on this machine overlap every one (${inRange.slice(0, 5).join('; ')}${inRange.length > 5 ? '; …' : ''})`,
  );
}

/** Held while a cluster picks its subnet and puts it on its bridge, so two clusters cannot pick the same. */
const NETWORK_LOCK = '/run/gvisor-e2e-network';


const sh = (cmd: string) => shSync(cmd);

export class ControlPlane {
  private constructor(
    readonly stateDir: string,
    readonly server: string,
    readonly adminKubeconfig: string,
    readonly pki: Pki,
    readonly net: ClusterNetwork,
  ) {}

  get gateway(): string {
    return this.net.address ?? `${this.net.prefix}.1`;
  }

  /**
   * `address`: serve the API on this address of the machine (a LAN that the nodes are on, e.g. VMs)
   * instead of on a bridge of the cluster's own (host nodes in network namespaces).
   */
  static async start(stateDir: string, bins: KubeBinaries, timeoutMs = 120_000, opts: { address?: string } = {}): Promise<ControlPlane> {
    const dir = join(stateDir, 'control-plane');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const net = opts.address ? { bridge: '', prefix: '', address: opts.address } : await withClusterLock(NETWORK_LOCK, 'network', async () => {
      const bridge = clusterNetwork(stateDir).bridge;
      // A bridge of this name is this state dir's, left by a crash: made again on a free subnet.
      if (sh(`ip -o link show ${bridge} 2>/dev/null || true`).trim()) sh(`ip link del ${bridge}`);
      const n = chooseClusterNetwork(stateDir);
      // Recorded before the bridge exists, so attach() and `down` know the subnet.
      writeFileSync(join(dir, 'network.json'), JSON.stringify(n));
      sh(`ip link add ${n.bridge} type bridge && ip addr add ${n.prefix}.1/24 dev ${n.bridge} && ip link set ${n.bridge} up`);
      return n;
    }, 60_000);
    if (opts.address) writeFileSync(join(dir, 'network.json'), JSON.stringify(net));
    else if (net.prefix !== clusterNetwork(stateDir).prefix) log('info', `cluster network ${net.prefix}.0/24 (the first choice overlaps a route of this machine)`);
    const gw = opts.address ?? `${net.prefix}.1`;
    const pki = new Pki(join(dir, 'pki'));
    const apiPort = await freePort();
    const server = `https://${gw}:${apiPort}`;
    const apiCert = pki.issue('apiserver', { cn: 'kube-apiserver', dns: ['kubernetes', 'kubernetes.default', 'kubernetes.default.svc', 'localhost'], ips: [gw, '127.0.0.1', '10.96.0.1'], server: true });
    const kubeletClient = pki.issue('apiserver-kubelet-client', { cn: 'kube-apiserver-kubelet-client', org: 'system:masters', client: true });
    const admin = pki.issue('admin', { cn: 'gvisor-e2e-admin', org: 'system:masters', client: true });
    const cm = pki.issue('controller-manager', { cn: 'system:kube-controller-manager', client: true });
    const sched = pki.issue('scheduler', { cn: 'system:kube-scheduler', client: true });
    const sa = pki.serviceAccountKey();
    const adminKubeconfig = join(dir, 'admin.kubeconfig');
    writeKubeconfig(adminKubeconfig, server, pki.ca.crt, admin);
    writeKubeconfig(join(dir, 'controller-manager.kubeconfig'), server, pki.ca.crt, cm);
    writeKubeconfig(join(dir, 'scheduler.kubeconfig'), server, pki.ca.crt, sched);

    const etcdClient = await freePort();
    const etcdPeer = await freePort();
    // etcd holds every secret of the cluster and, with --allow-privileged, the way to root on the
    // host nodes: any local user can reach 127.0.0.1, so both its ports take only clients with a
    // certificate of its own CA, whose keys only root can read (0600 in a 0700 directory).
    const etcdPki = new Pki(join(dir, 'etcd-pki'), 'gvisor-e2e-etcd-ca');
    const etcdServer = etcdPki.issue('server', { cn: 'etcd', dns: ['localhost'], ips: ['127.0.0.1'], server: true, client: true });
    const etcdPeerCert = etcdPki.issue('peer', { cn: 'etcd-peer', dns: ['localhost'], ips: ['127.0.0.1'], server: true, client: true });
    const etcdClientCert = etcdPki.issue('apiserver-etcd-client', { cn: 'kube-apiserver-etcd-client', client: true });
    const etcdUrl = `https://127.0.0.1:${etcdClient}`;
    const cp = new ControlPlane(stateDir, server, adminKubeconfig, pki, net);
    writeFileSync(join(dir, 'etcd.json'), JSON.stringify({ url: etcdUrl, ca: etcdPki.ca.crt, cert: etcdClientCert.crt, key: etcdClientCert.key }), { mode: 0o600 });
    cp.daemon('etcd', bins.etcd, [
      `--data-dir=${join(dir, 'etcd')}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--cert-file=${etcdServer.crt}`,
      `--key-file=${etcdServer.key}`,
      '--client-cert-auth=true',
      `--trusted-ca-file=${etcdPki.ca.crt}`,
      `--listen-peer-urls=https://127.0.0.1:${etcdPeer}`,
      `--initial-advertise-peer-urls=https://127.0.0.1:${etcdPeer}`,
      `--initial-cluster=default=https://127.0.0.1:${etcdPeer}`,
      `--peer-cert-file=${etcdPeerCert.crt}`,
      `--peer-key-file=${etcdPeerCert.key}`,
      '--peer-client-cert-auth=true',
      `--peer-trusted-ca-file=${etcdPki.ca.crt}`,
      '--log-level=warn',
    ]);
    cp.daemon('kube-apiserver', bins.kubeApiserver, [
      `--etcd-servers=${etcdUrl}`,
      `--etcd-cafile=${etcdPki.ca.crt}`,
      `--etcd-certfile=${etcdClientCert.crt}`,
      `--etcd-keyfile=${etcdClientCert.key}`,
      `--bind-address=${gw}`,
      `--advertise-address=${gw}`,
      `--secure-port=${apiPort}`,
      '--service-cluster-ip-range=10.96.0.0/16',
      `--client-ca-file=${pki.ca.crt}`,
      `--tls-cert-file=${apiCert.crt}`,
      `--tls-private-key-file=${apiCert.key}`,
      `--kubelet-client-certificate=${kubeletClient.crt}`,
      `--kubelet-client-key=${kubeletClient.key}`,
      // Node names do not resolve here; reach kubelets by the IP they registered.
      '--kubelet-preferred-address-types=InternalIP,Hostname',
      '--service-account-issuer=https://kubernetes.default.svc',
      `--service-account-key-file=${sa.pub}`,
      `--service-account-signing-key-file=${sa.key}`,
      '--authorization-mode=Node,RBAC',
      // Nodes that join over the network (VMs) bootstrap their kubelet credentials with a token, as kubeadm's do.
      '--enable-bootstrap-token-auth=true',
      '--enable-admission-plugins=NodeRestriction',
      '--allow-privileged=true',
      '--endpoint-reconciler-type=none',
      '--v=1',
    ]);
    await cp.waitReady(timeoutMs);
    cp.daemon('kube-controller-manager', bins.kubeControllerManager, [
      `--kubeconfig=${join(dir, 'controller-manager.kubeconfig')}`,
      `--authentication-kubeconfig=${join(dir, 'controller-manager.kubeconfig')}`,
      `--authorization-kubeconfig=${join(dir, 'controller-manager.kubeconfig')}`,
      `--service-account-private-key-file=${sa.key}`,
      `--root-ca-file=${pki.ca.crt}`,
      // Each controller acts as its own ServiceAccount, with the roles RBAC bootstraps for it.
      '--use-service-account-credentials=true',
      '--leader-elect=false',
      '--bind-address=127.0.0.1',
      '--secure-port=0',
      '--controllers=*,bootstrapsigner,tokencleaner,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller',
      // Signs the kubelets' client CSRs (TLS bootstrap and rotation) with the cluster CA.
      `--cluster-signing-cert-file=${pki.ca.crt}`,
      `--cluster-signing-key-file=${pki.ca.key}`,
      '--v=1',
    ]);
    cp.daemon('kube-scheduler', bins.kubeScheduler, [
      `--kubeconfig=${join(dir, 'scheduler.kubeconfig')}`,
      `--authentication-kubeconfig=${join(dir, 'scheduler.kubeconfig')}`,
      `--authorization-kubeconfig=${join(dir, 'scheduler.kubeconfig')}`,
      '--leader-elect=false',
      '--bind-address=127.0.0.1',
      '--secure-port=0',
      '--v=1',
    ]);
    return cp;
  }

  /** Re-attaches to a control plane started by another process. */
  static attach(stateDir: string): ControlPlane | undefined {
    const dir = join(stateDir, 'control-plane');
    const kc = join(dir, 'admin.kubeconfig');
    if (!existsSync(kc)) return undefined;
    const server = /server: (\S+)/.exec(readFileSync(kc, 'utf8'))?.[1] ?? '';
    let net = clusterNetwork(stateDir);
    try {
      net = JSON.parse(readFileSync(join(dir, 'network.json'), 'utf8')) as ClusterNetwork;
    } catch {
      /* a control plane from before the subnet was recorded: the derived one */
    }
    return new ControlPlane(stateDir, server, kc, new Pki(join(dir, 'pki')), net);
  }

  private daemon(name: string, bin: string, args: string[]): void {
    const dir = join(this.stateDir, 'control-plane');
    const out = openSync(join(dir, `${name}.log`), 'a');
    const child = spawn(bin, args, { detached: true, stdio: ['ignore', out, out], env: { ...process.env, [CLUSTER_MARKER]: this.stateDir } });
    child.unref();
    log('debug', `started ${name} (pid ${child.pid})`);
  }

  /** A kubeconfig for a kubelet: client cert CN=system:node:<name>, O=system:nodes (the Node authorizer's shape). */
  kubeletKubeconfig(node: string, path: string): void {
    const c = this.pki.issue(`kubelet-${node}`, { cn: `system:node:${node}`, org: 'system:nodes', client: true });
    writeKubeconfig(path, this.server, this.pki.ca.crt, c);
  }

  /** GET on the API server with the admin certificate; resolves to [status, body]. */
  get(path: string): Promise<[number, string]> {
    const admin = { crt: join(this.pki.dir, 'admin.crt'), key: join(this.pki.dir, 'admin.key') };
    return new Promise((res, rej) => {
      const req = request(`${this.server}${path}`, { ca: readFileSync(this.pki.ca.crt), cert: readFileSync(admin.crt), key: readFileSync(admin.key), timeout: 5000 }, (r) => {
        let body = '';
        r.on('data', (d) => (body += d));
        r.on('end', () => res([r.statusCode ?? 0, body]));
      });
      req.on('error', rej);
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.end();
    });
  }

  async waitReady(timeoutMs: number): Promise<void> {
    let last = '';
    await until(
      () => `kube-apiserver at ${this.server} to be ready (last: ${last}; log: ${this.logTail('kube-apiserver')})`,
      timeoutMs,
      async () => {
        try {
          const [code, body] = await this.get('/readyz');
          if (code === 200) return true;
          last = `HTTP ${code}: ${body.slice(0, 300)}`;
        } catch (e) {
          last = (e as Error).message;
        }
        return false;
      },
    );
  }

  logTail(name: string, lines = 5): string {
    try {
      return readFileSync(join(this.stateDir, 'control-plane', `${name}.log`), 'utf8').trim().split('\n').slice(-lines).join(' | ');
    } catch {
      return '(no log)';
    }
  }

  /** Kills every process carrying this cluster's marker and removes the bridge. */
  static stop(stateDir: string): void {
    for (let round = 0; round < 3; round++) {
      let found = 0;
      for (const ent of readdirSync('/proc')) {
        if (!/^\d+$/.test(ent) || Number(ent) === process.pid) continue;
        try {
          if (readFileSync(`/proc/${ent}/environ`, 'latin1').split('\0').includes(`${CLUSTER_MARKER}=${stateDir}`)) {
            process.kill(Number(ent), 'SIGKILL');
            found++;
          }
        } catch {
          /* gone */
        }
      }
      if (!found) break;
      execFileSync('sleep', ['0.2']);
    }
    // The nodes' host-side veths (named after the bridge) are deleted explicitly: the kernel frees
    // a dead network namespace's links asynchronously, so killing the node is not enough to make
    // them vanish before `down` returns.
    const net = clusterNetwork(stateDir);
    const ours = () =>
      sh('ip -o link show')
        .split('\n')
        .map((l) => /^\d+: ([^:@\s]+)/.exec(l)?.[1])
        .filter((n): n is string => !!n && n.startsWith(net.bridge));
    for (let round = 0; round < 50; round++) {
      const links = ours();
      if (!links.length) break;
      for (const l of links.sort((a, b) => b.length - a.length)) sh(`ip link del ${l} 2>/dev/null || true`);
      execFileSync('sleep', ['0.1']);
    }
    const left = ours();
    if (left.length) throw new Error(`down: network links ${left.join(', ')} of cluster ${stateDir} are still present after 5s`);
    rmSync(join(stateDir, 'control-plane'), { recursive: true, force: true });
  }
}
