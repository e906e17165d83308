// What a cluster offers, as its provider declares it. Verbs and suites ask for a capability, never
// for a provider by name (as kind's providers answer Info() and callers never switch on a name).

export interface Capabilities {
  /** A Kubernetes API: RuntimeClass, node labels, pods through the kubelet, scheduling. */
  kubernetesApi: boolean;
  /** `install` puts gVisor's files on the nodes (false: the cluster is tested as it is). */
  installsNodes: boolean;
  /** `run` removes what it made afterwards (the cluster, or what the harness added to it), unless --keep. */
  cleansUpAfterRun: boolean;
  /** The pools can be reshaped from a customer's manifest (`repro`). */
  reshapesPools: boolean;
}

export type Capability = keyof Capabilities;

/** How a capability reads in a skip reason or an error. */
export const CAPABILITY_NAMES: Record<Capability, string> = {
  kubernetesApi: 'a Kubernetes API',
  installsNodes: 'installing on the nodes',
  cleansUpAfterRun: 'cleaning up after a run',
  reshapesPools: 'pools reshaped from a manifest',
};
