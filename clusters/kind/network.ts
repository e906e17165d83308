// Pod networking for kind clusters booted from the local node image, which has no kindnetd (its
// module is not served by the Go proxy): the provider does what kindnetd does once the nodes have
// registered — a ptp + host-local CNI config on each node's own podCIDR, and a route to every other
// node's podCIDR through that node (cmd/kindnetd in kind's repository). Then it waits for Ready.
import { InfrastructureError } from '../../harness/errors.ts';
import { mustExec, type NodeAccess, sh, writeNodeFile } from '../../harness/node.ts';
import { until } from '../../harness/wait.ts';

export const CNI_CONFIG_PATH = '/etc/cni/net.d/10-kindnet.conflist';
const KUBECTL = 'kubectl --kubeconfig /etc/kubernetes/admin.conf';

export interface NodeRoute {
  name: string;
  podCIDR: string;
  internalIP: string;
}

/** kindnetd's CNI config for a node's podCIDR (ptp, host-local, portmap), as cmd/kindnetd/cni.go writes it. */
export function kindnetConflist(podCIDR: string): string {
  return `${JSON.stringify(
    {
      cniVersion: '0.4.0',
      name: 'kindnet',
      plugins: [
        { type: 'ptp', ipMasq: false, ipam: { type: 'host-local', dataDir: '/run/cni-ipam-state', routes: [{ dst: '0.0.0.0/0' }], ranges: [[{ subnet: podCIDR }]] }, mtu: 1500 },
        { type: 'portmap', capabilities: { portMappings: true } },
      ],
    },
    null,
    2,
  )}\n`;
}

/** Parses `name podCIDR internalIP` lines (kubectl jsonpath below); a node without a podCIDR yet has none. */
export function parseNodeRoutes(out: string): { routes: NodeRoute[]; pending: string[] } {
  const routes: NodeRoute[] = [];
  const pending: string[] = [];
  for (const line of out.split('\n').map((l) => l.trim()).filter(Boolean)) {
    const [name, podCIDR, internalIP] = line.split(/\s+/);
    if (name && podCIDR && internalIP && podCIDR.includes('/')) routes.push({ name, podCIDR, internalIP });
    else if (name) pending.push(name);
  }
  return { routes, pending };
}

/**
 * Lays pod networking on `nodes` (every node of the cluster, by Kubernetes node name = container name),
 * asking the API server through `controlPlane`, then waits until every node is Ready.
 */
export async function layPodNetwork(controlPlane: NodeAccess, nodes: NodeAccess[], timeoutMs = 180_000): Promise<void> {
  let routes: NodeRoute[] = [];
  let pending: string[] = nodes.map((n) => n.name);
  const jsonpath = `{range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\\n"}{end}`;
  await until(
    () => `a podCIDR for every kind node (still without: ${pending.join(', ')})`,
    timeoutMs,
    async () => {
      const r = await controlPlane.exec(`${KUBECTL} get nodes -o jsonpath=${sh(jsonpath)}`);
      if (r.code !== 0) return false;
      ({ routes, pending } = parseNodeRoutes(r.stdout));
      pending.push(...nodes.map((n) => n.name).filter((n) => !routes.some((x) => x.name === n) && !pending.includes(n)));
      return pending.length === 0;
    },
    1000,
  );
  for (const node of nodes) {
    const own = routes.find((r) => r.name === node.name);
    if (!own) throw new InfrastructureError(`kind node ${node.name} is not a Kubernetes node of this cluster`);
    await writeNodeFile(node, CNI_CONFIG_PATH, kindnetConflist(own.podCIDR), '0644');
    for (const other of routes.filter((r) => r.name !== node.name)) await mustExec(node, `ip route replace ${sh(other.podCIDR)} via ${sh(other.internalIP)}`);
  }
  let notReady: string[] = [];
  await until(
    () => `every kind node to be Ready after laying pod networking (not Ready: ${notReady.join(', ')})`,
    timeoutMs,
    async () => {
      const r = await controlPlane.exec(`${KUBECTL} get nodes -o jsonpath=${sh('{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}')}`);
      notReady = r.stdout.split('\n').map((l) => l.trim().split(/\s+/)).filter((f) => f[0] && f[1] !== 'True').map((f) => f[0]!);
      return r.code === 0 && notReady.length === 0;
    },
    1000,
  );
}
