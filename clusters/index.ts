import type { Config, NodeConfig } from '../harness/config.ts';
import { KindProvider } from './kind/index.ts';
import { ExistingProvider } from './existing/index.ts';
import { LocalProvider } from './local/index.ts';

// A cluster provider makes (or finds) the nodes a run tests, and removes what it made.
// "nodes": hosts the user already has. "local": the embedded default on this machine.
// "kind": a kind cluster in a Docker engine. "existing": a Kubernetes cluster by kubeconfig.

export interface ClusterProvider {
  readonly kind: string;
  /** Creates or re-attaches to the cluster; returns its nodes. Idempotent. */
  up(): Promise<NodeConfig[]>;
  /** Removes everything the provider created (and only that). Safe to repeat after a crash. */
  down(): Promise<void>;
  /** Admin kubeconfig when the cluster runs Kubernetes (after up). */
  kubeconfig(): string | undefined;
  /** RuntimeClass and node labels, done by the provider itself on a cluster the harness does not own (only what is missing, recorded for down). */
  installKubernetesObjects?(nodes: NodeConfig[]): Promise<void>;
  /** Notes that install changed files on a node, or imported the test image there, so that down undoes it. */
  recordOnNode?(node: string, what: 'files' | 'image'): void;
}

class NodesProvider implements ClusterProvider {
  readonly kind = 'nodes';
  constructor(private readonly nodes: NodeConfig[]) {}
  async up(): Promise<NodeConfig[]> {
    return this.nodes;
  }
  async down(): Promise<void> {
    // The harness did not create these hosts; `down` uninstalls gVisor from them instead.
  }
  kubeconfig(): string | undefined {
    return undefined;
  }
}

export function providerFor(cfg: Config): ClusterProvider {
  switch (cfg.cluster.provider) {
    case 'nodes':
      return new NodesProvider(cfg.cluster.nodes);
    case 'local':
      return new LocalProvider(cfg.cluster);
    case 'kind':
      return new KindProvider({ ...cfg, cluster: cfg.cluster });
    case 'existing':
      return new ExistingProvider(cfg.cluster, cfg);
  }
}
