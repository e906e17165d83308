// The provider registry: one line per kind of cluster. Everything about a provider (its config
// section, rules, doctor checks, capabilities) comes from its folder through this list; the rest
// of the harness reaches providers only through the functions below.
import { z } from 'zod';
import type { Capabilities } from '../harness/capabilities.ts';
import { type ClusterSchemas, type ClusterSpec, type Config, loadConfigWith, parseConfigWith } from '../harness/config.ts';
import { applyGVisorSpec, type GVisorSpec } from '../harness/manifests.ts';
import { existing, type ExistingCluster } from './existing/index.ts';
import { kind, type KindCluster } from './kind/index.ts';
import { local, type LocalCluster } from './local/index.ts';
import { nodes, type NodesCluster } from './nodes/index.ts';
import type { ClusterProvider, ProviderDefinition } from './provider.ts';
import { vm, type VmCluster } from './vm/index.ts';

// The order is the order `cluster.provider` lists them in an error.
const PROVIDERS = [nodes, vm, local, kind, existing] as const;

/** A config whose `cluster` section is one of the registered providers' (narrowed by `provider`). */
export type AnyCluster = NodesCluster | VmCluster | LocalCluster | KindCluster | ExistingCluster;
export type LoadedConfig = Omit<Config, 'cluster'> & { cluster: AnyCluster };

function definitionOf(cluster: ClusterSpec): ProviderDefinition {
  const d = PROVIDERS.find((p) => p.provider === cluster.provider);
  // The schema admits only registered providers, so this is a programming error.
  if (!d) throw new Error(`no provider "${cluster.provider}" is registered`);
  return d as unknown as ProviderDefinition;
}

const schemas: ClusterSchemas = {
  schema: z.discriminatedUnion(
    'provider',
    PROVIDERS.map((p) => p.schema) as unknown as [z.ZodObject<{ provider: z.ZodLiteral<string> }>, ...z.ZodObject<{ provider: z.ZodLiteral<string> }>[]],
  ) as unknown as z.ZodType<ClusterSpec>,
  check: (cfg, issue) => definitionOf(cfg.cluster).check(cfg.cluster, cfg, issue),
  resolvePaths: (cfg, paths) => definitionOf(cfg.cluster).resolvePaths(cfg.cluster, paths),
};

/** Parses and validates a config text; `source` names it in errors. */
export function parseConfig(text: string, source: string): LoadedConfig {
  return parseConfigWith(text, source, schemas) as LoadedConfig;
}

/** Loads a config file; relative paths inside it are resolved against the file's directory. */
export function loadConfig(file: string): LoadedConfig {
  return loadConfigWith(file, schemas) as LoadedConfig;
}

export function providerFor(cfg: Config): ClusterProvider {
  return definitionOf(cfg.cluster).create(cfg);
}

/** What the config's cluster offers, without making a provider. */
export function capabilitiesOf(cfg: Config): Capabilities {
  return definitionOf(cfg.cluster).capabilities(cfg.cluster);
}

/** The worker pools the config's cluster declares. */
export function poolsOf(cfg: Config): string[] {
  return definitionOf(cfg.cluster).poolNames(cfg.cluster);
}

/**
 * A customer's manifest applied to a config: its gVisor pools, binary path and flags win; the
 * provider reshapes its pools to the manifest's or checks that they are there.
 */
export function applyManifest<C extends Config>(cfg: C, spec: GVisorSpec): C {
  const out = applyGVisorSpec(cfg, spec);
  out.cluster = definitionOf(out.cluster).applyManifest(out.cluster, spec) as C['cluster'];
  return out;
}

/**
 * The config `repro` runs: this provider's cluster for a manifest, or undefined where it cannot.
 * A provider offers `forRepro` when it makes the cluster itself: with pools reshaped from the
 * manifest (local, kind), or on hosts of its own whose pools must match the manifest's (vm).
 */
export function reproConfig<C extends Config>(cfg: C): C | undefined {
  const d = definitionOf(cfg.cluster);
  return d.forRepro ? { ...cfg, cluster: d.forRepro(cfg.cluster) } : undefined;
}
