// Defaults of the ClusterProvider interface that most providers share; each provider overrides
// what its kind of cluster does differently.
import type { Capabilities } from '../../harness/capabilities.ts';
import type { ClusterSpec, Config, NodeConfig } from '../../harness/config.ts';
import type { ClusterProvider, Finding, ProviderInfo, Secrets } from '../provider.ts';

export abstract class BaseProvider<C extends ClusterSpec> implements ClusterProvider {
  constructor(
    protected readonly cfg: Config & { cluster: C },
    private readonly caps: Capabilities,
    /** Where the provider records the cluster on this machine, if it does. */
    protected readonly stateDir?: string,
  ) {}

  protected get spec(): C {
    return this.cfg.cluster;
  }

  info(): ProviderInfo {
    return { provider: this.spec.provider, cluster: this.spec.name, capabilities: this.caps, stateDir: this.stateDir };
  }

  abstract up(): Promise<NodeConfig[]>;
  abstract down(): Promise<void>;
  abstract doctor(): Promise<Finding[]>;

  async uninstall(): Promise<void> {
    // The cluster's nodes go away with `down`, and what was installed with them.
  }
  async collectLogs(_reportsDir: string): Promise<string | undefined> {
    return undefined;
  }
  secrets(): Secrets {
    return { keyFiles: [], kubeconfigs: [] };
  }
  kubeconfig(): string | undefined {
    return undefined;
  }
  async installKubernetesObjects(nodes: NodeConfig[]): Promise<void> {
    const kubeconfig = this.kubeconfig();
    // The Kubernetes client is loaded only for clusters with an API (it costs ~80 MB per process).
    if (kubeconfig) await (await import('../../harness/kube.ts')).installKubernetesObjects(kubeconfig, this.cfg, nodes);
  }
  recordOnNode(_node: string, _what: 'files' | 'image'): void {
    // Only a cluster the harness does not own needs to remember where install touched it.
  }
  recordRun(_runId: string): void {
    // Only a cluster the harness does not own needs to tell its runs' namespaces from others'.
  }
  async warm(): Promise<void> {}

}
