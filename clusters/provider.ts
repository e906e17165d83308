// The one interface every kind of cluster implements (as kind's providers do), and the definition
// that registers a provider: its `cluster` config schema, its rules, and a factory. Nothing outside
// clusters/ knows which provider it is talking to; it asks for capabilities instead.
import type { z } from 'zod';
import type { Capabilities } from '../harness/capabilities.ts';
import type { AddIssue, ClusterSpec, Config, NodeConfig, PathResolver } from '../harness/config.ts';
import type { GVisorSpec } from '../harness/manifests.ts';

/** One line of `doctor`: what was checked, whether it is there, and how to get it if not. */
export interface Finding {
  check: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

/** Files whose contents are secrets: never logged, redacted from every report. */
export interface Secrets {
  keyFiles: string[];
  kubeconfigs: string[];
}

export interface ProviderInfo {
  provider: string;
  cluster: string;
  capabilities: Capabilities;
  /** Where the provider keeps its record of the cluster on this machine (and the lock beside it). */
  stateDir?: string;
}

export interface ClusterProvider {
  info(): ProviderInfo;
  /** Creates the cluster or re-attaches to it; returns its nodes. Idempotent. */
  up(): Promise<NodeConfig[]>;
  /** Removes everything the provider created, and only that. Safe to repeat after a crash. */
  down(): Promise<void>;
  /** Undoes `install` on nodes that outlive `down` (hosts the harness did not create). */
  uninstall(): Promise<void>;
  /** What this machine and the nodes lack for this cluster, and how to get it. */
  doctor(): Promise<Finding[]>;
  /** Collects the cluster's own logs (journal, kubelet, containerd) under `reportsDir`; returns where, if it can. */
  collectLogs(reportsDir: string): Promise<string | undefined>;
  secrets(): Secrets;
  /** Admin kubeconfig when the cluster runs Kubernetes (after up). */
  kubeconfig(): string | undefined;
  /** The RuntimeClass and the gVisor node label, as the extension leaves them (only with a Kubernetes API). */
  installKubernetesObjects(nodes: NodeConfig[]): Promise<void>;
  /** Notes that install changed files on a node, or imported the test image there, so that down undoes it. */
  recordOnNode(node: string, what: 'files' | 'image'): void;
  /** Notes a run about to start its suites, so that down removes that run's namespaces and no other run's. */
  recordRun(runId: string): void;
  /** Builds and caches what this kind of cluster needs, so the first `up` is not also the first build. */
  warm(): Promise<void>;
}

/** A provider as the registry knows it: the part of the config it owns, and how to make it. */
export interface ProviderDefinition<C extends ClusterSpec = ClusterSpec> {
  /** `cluster.provider` in the config. */
  readonly provider: string;
  /** The `cluster` section: `provider` as a literal, plus every field the provider takes. */
  readonly schema: z.ZodType<C>;
  /** Rules across sections (e.g. every gVisor pool is one of the cluster's pools). */
  check(cluster: C, cfg: Config, issue: AddIssue): void;
  /** Resolves the section's relative paths against the config file's directory. */
  resolvePaths(cluster: C, paths: PathResolver): void;
  capabilities(cluster: C): Capabilities;
  /** The worker pools the config declares (or, for a cluster found through its API, names). */
  poolNames(cluster: C): string[];
  /** A customer's manifest applied to this section: pools reshaped (repro) or checked to exist. */
  applyManifest(cluster: C, spec: GVisorSpec): C;
  /** The section `repro` uses, for providers that make the cluster a manifest describes (pools reshaped, or matched to their hosts). */
  forRepro?(cluster: C): C;
  create(cfg: Config & { cluster: C }): ClusterProvider;
}

/** Declares a provider with its section's type checked against its schema. */
export function defineProvider<C extends ClusterSpec>(d: ProviderDefinition<C>): ProviderDefinition<C> {
  return d;
}
