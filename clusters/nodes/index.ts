// "nodes": hosts the user already has (SSH, this machine, or `docker exec`), without a Kubernetes
// API. The harness did not create them: `down` uninstalls what `install` put there, nothing else.
import { z } from 'zod';
import { type Config, type NodeConfig, dnsLabel, nodeSchema } from '../../harness/config.ts';
import { BaseProvider } from '../common/base.ts';
import { doctorNodes, uninstallHosts } from '../common/hosts.ts';
import { checkMembers, requireManifestPools } from '../common/pools.ts';
import { defineProvider, type Finding, type Secrets } from '../provider.ts';

const schema = z
  .object({
    /** "nodes": hosts you already have, reached over SSH / locally / docker exec, without a Kubernetes API. */
    provider: z.literal('nodes'),
    name: dnsLabel.default('gvisor-e2e'),
    nodes: z.array(nodeSchema).min(1),
  })
  .strict();
export type NodesCluster = z.infer<typeof schema>;

const CAPABILITIES = { kubernetesApi: false, installsNodes: true, cleansUpAfterRun: false, reshapesPools: false };

class NodesProvider extends BaseProvider<NodesCluster> {
  async up(): Promise<NodeConfig[]> {
    return this.spec.nodes;
  }
  async down(): Promise<void> {
    // The harness did not create these hosts; `uninstall` is what `down` undoes on them.
  }
  override async uninstall(): Promise<void> {
    await uninstallHosts(this.cfg, this.spec.nodes);
  }
  doctor(): Promise<Finding[]> {
    return doctorNodes(this.spec.nodes);
  }
  override secrets(): Secrets {
    return { keyFiles: this.spec.nodes.flatMap((n) => (n.access.type === 'ssh' ? [n.access.privateKeyPath] : [])), kubeconfigs: [] };
  }
}

export const nodes = defineProvider<NodesCluster>({
  provider: 'nodes',
  schema,
  check(c, cfg, issue) {
    c.nodes.forEach((n, i) => {
      if (n.access.type === 'api') issue(['cluster', 'nodes', i, 'access', 'type'], 'access "api" is only for nodes of an existing cluster');
    });
    checkMembers(c.nodes, 'nodes', cfg.gvisor.pools, issue);
  },
  resolvePaths(c, paths) {
    c.nodes.forEach((n, i) => {
      if (n.access.type === 'ssh') paths.keyFiles(n.access, `cluster.nodes[${i}].access`);
    });
  },
  capabilities: () => CAPABILITIES,
  poolNames: (c) => [...new Set(c.nodes.map((n) => n.pool))],
  applyManifest(c, spec) {
    requireManifestPools(nodes.poolNames(c), spec);
    return c;
  },
  create: (cfg: Config & { cluster: NodesCluster }) => new NodesProvider(cfg, CAPABILITIES),
});
