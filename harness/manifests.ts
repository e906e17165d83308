import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';
import { z } from 'zod';
import { absolutePath, type Config, dnsLabel } from './config.ts';
import { ConfigError } from './errors.ts';

// A customer's Gardener manifests as input: a ContainerRuntime (what gardener-extension-runtime-gvisor
// reconciles) or a Shoot (spec.provider.workers[].cri.containerRuntimes). Either is turned into the
// harness's gVisor settings and worker pools, so a customer's setup can be reproduced as it is.

const providerConfig = z
  .object({
    apiVersion: z.literal('gvisor.runtime.extensions.config.gardener.cloud/v1alpha1'),
    kind: z.literal('GVisorConfiguration'),
    configFlags: z.record(z.string(), z.string()).optional(),
    testImageTag: z.string().optional(),
  })
  .strict();

const containerRuntime = z.object({
  apiVersion: z.literal('extensions.gardener.cloud/v1alpha1'),
  kind: z.literal('ContainerRuntime'),
  metadata: z.object({ name: z.string().optional(), namespace: z.string().optional() }).passthrough().optional(),
  spec: z
    .object({
      type: z.literal('gvisor', { message: 'only type "gvisor" is handled' }),
      // Goes into the containerd unit's drop-in and into commands on the node: checked like the config's.
      binaryPath: absolutePath,
      providerConfig: providerConfig.optional(),
      workerPool: z.object({ name: dnsLabel, selector: z.object({ matchLabels: z.record(z.string(), z.string()).optional() }).passthrough().optional() }),
    })
    .passthrough(),
});

const shoot = z.object({
  apiVersion: z.literal('core.gardener.cloud/v1beta1'),
  kind: z.literal('Shoot'),
  metadata: z.object({ name: z.string().optional() }).passthrough().optional(),
  spec: z
    .object({
      provider: z
        .object({
          workers: z
            .array(
              z
                .object({
                  name: dnsLabel,
                  cri: z
                    .object({
                      name: z.string().optional(),
                      containerRuntimes: z.array(z.object({ type: z.string(), providerConfig: providerConfig.optional() }).passthrough()).optional(),
                    })
                    .passthrough()
                    .optional(),
                })
                .passthrough(),
            )
            .min(1),
        })
        .passthrough(),
    })
    .passthrough(),
});

/** What a manifest says about gVisor: the pools that get it, where runsc goes, the runsc flags. */
export interface GVisorSpec {
  source: string;
  pools: string[];
  /** All worker pools the manifest names (a Shoot's workers). */
  allPools: string[];
  binaryPath?: string;
  configFlags: Record<string, string>;
}

function issues(source: string, e: z.ZodError, prefix = ''): ConfigError {
  return new ConfigError(
    source,
    e.issues.map((i) => ({ path: prefix + i.path.map((p, k) => (typeof p === 'number' ? `[${p}]` : k === 0 && !prefix ? String(p) : `.${String(p)}`)).join(''), message: i.message })),
  );
}

export function parseManifest(text: string, source: string): GVisorSpec {
  const docs = parseAllDocuments(text);
  if (!Array.isArray(docs) || docs.length === 0) throw new ConfigError(source, [{ path: '', message: 'no YAML document' }]);
  const doc = docs[0]!;
  if (doc.errors.length) throw new ConfigError(source, doc.errors.map((e) => ({ path: e.linePos ? `line ${e.linePos[0].line}` : '', message: e.message.split('\n')[0] ?? '' })));
  const obj = doc.toJS() as { kind?: unknown };
  if (obj?.kind === 'ContainerRuntime') {
    const r = containerRuntime.safeParse(obj);
    if (!r.success) throw issues(source, r.error);
    const s = r.data.spec;
    return { source, pools: [s.workerPool.name], allPools: [s.workerPool.name], binaryPath: s.binaryPath, configFlags: s.providerConfig?.configFlags ?? {} };
  }
  if (obj?.kind === 'Shoot') {
    const r = shoot.safeParse(obj);
    if (!r.success) throw issues(source, r.error);
    const workers = r.data.spec.provider.workers;
    const gv = workers.filter((w) => w.cri?.containerRuntimes?.some((c) => c.type === 'gvisor'));
    if (gv.length === 0) throw new ConfigError(source, [{ path: 'spec.provider.workers', message: 'no worker has a containerRuntimes entry of type "gvisor"' }]);
    const bad = gv.findIndex((w) => w.cri?.name !== undefined && w.cri.name !== 'containerd');
    if (bad >= 0) throw new ConfigError(source, [{ path: `spec.provider.workers[${workers.indexOf(gv[bad]!)}].cri.name`, message: `gVisor needs cri.name "containerd", got "${gv[bad]!.cri!.name}"` }]);
    const flags = gv[0]!.cri!.containerRuntimes!.find((c) => c.type === 'gvisor')!.providerConfig?.configFlags ?? {};
    return { source, pools: gv.map((w) => w.name), allPools: workers.map((w) => w.name), configFlags: flags };
  }
  throw new ConfigError(source, [{ path: 'kind', message: `expected "ContainerRuntime" or "Shoot", got ${JSON.stringify(obj?.kind)}` }]);
}

export function loadManifest(file: string): GVisorSpec {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, [{ path: '', message: `cannot read the file: ${(e as NodeJS.ErrnoException).code}` }]);
  }
  return parseManifest(text, file);
}

/**
 * The gVisor settings of a manifest applied to a config: its gVisor pools, binary path and flags
 * win. What it means for the cluster's pools is the provider's (clusters/index.ts applyManifest).
 */
export function applyGVisorSpec<C extends Config>(cfg: C, spec: GVisorSpec): C {
  const out = structuredClone(cfg);
  out.gvisor.pools = spec.pools;
  if (spec.binaryPath) out.gvisor.binaryPath = spec.binaryPath;
  out.gvisor.configFlags = spec.configFlags;
  return out;
}
