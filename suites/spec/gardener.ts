// The conformance profile of gardener-extension-runtime-gvisor: what a node and cluster look like once the extension enabled gVisor.

import { at, rule, type Toml } from './rule.ts';

// Paths below are in github.com/gardener/gardener-extension-runtime-gvisor, checked with the code
// search over its stored versions. Where search could not confirm a fact, the rule says so.
const REPO = 'gardener-extension-runtime-gvisor';
const INSTALL_SCRIPT = `${REPO} charts/internal/gvisor-installation/templates/configmap-containerd.yaml`;
const VALUES = `${REPO} pkg/charts/values.go`;
const RUNTIME_CLASS = `${REPO} charts/internal/gvisor/templates/runtimeclass-gvisor.yaml`;
const INTEGRATION_TEST = `${REPO} test/integration/container-runtime/container_runtime.go`;
const README = `${REPO} README.md`;
/** gvisor-e2e's own choices, written down in its README (not an upstream rule). */
export const HARNESS_CHOICE = 'gvisor-e2e README.md (its own choice, not an upstream rule)';

export type ConfigVersion = 1 | 2 | 3;

/** config.toml's schema version: an absent `version` key means 1. */
export const configVersion = rule(
  `${INSTALL_SCRIPT} ("version 1 is the default version, even though it is deprecated")`,
  (doc: Toml): ConfigVersion | undefined => {
    const v = doc.version ?? 1;
    return v === 1 || v === 2 || v === 3 ? v : undefined;
  },
);

/**
 * Where the handler's runtime table lives, per config version. The install script writes
 * `plugins.cri…` (1) and `plugins."io.containerd.grpc.v1.cri"…` (2). Search found no stored
 * version of the script handling version 3: that path is containerd 2.x's own
 * (containerd docs/cri/config.md, "config version 3 … io.containerd.cri.v1.runtime").
 */
export const runtimeTablePath = rule(
  `${INSTALL_SCRIPT} (versions 1, 2); containerd docs/cri/config.md (version 3)`,
  (version: ConfigVersion): string[] => {
    const plugin = { 1: 'cri', 2: 'io.containerd.grpc.v1.cri', 3: 'io.containerd.cri.v1.runtime' }[version];
    return ['plugins', plugin, 'containerd', 'runtimes'];
  },
);

/**
 * Where a handler's table sits in a file of another config version: the path each version reads,
 * other than this file's. containerd 2 silently ignores a version-2 table in a version-3 file, and
 * every pod of that handler then fails (google/gvisor#13985): the message names both tables.
 */
export const misplacedRuntimeTable = rule(
  `${INSTALL_SCRIPT} (versions 1, 2); containerd docs/cri/config.md (version 3); google/gvisor#13985 (a version-2 table in a version-3 file is ignored)`,
  (doc: Toml, handler: string, version: ConfigVersion): string[] | undefined => {
    for (const other of [1, 2, 3] as const) {
      if (other === version) continue;
      const path = [...runtimeTablePath(other), handler];
      const found = at(doc, path);
      if (found && typeof found === 'object') return path;
    }
    return undefined;
  },
);

export interface RuntimeInputs {
  shim: 'runsc' | 'runc-v2';
  binaryPath: string;
  /** Where runsc.toml lives on the node (the extension: /etc/containerd/runsc.toml). */
  runscConfigPath: string;
}

export interface ExpectedRuntime {
  runtime_type: string;
  options: Record<string, string>;
  source: string;
}

/**
 * The handler's runtime entry. With the runsc shim, as the install script appends it:
 * `runtime_type = "io.containerd.runsc.v1"` and `options` TypeUrl/ConfigPath. With `shim: runc-v2`
 * the harness drives runsc through runc's v2 shim as its BinaryName (its own choice).
 */
export const runtimeEntry = rule(INSTALL_SCRIPT, (i: RuntimeInputs): ExpectedRuntime => {
  if (i.shim === 'runsc') {
    return { runtime_type: 'io.containerd.runsc.v1', options: { TypeUrl: 'io.containerd.runsc.v1.options', ConfigPath: i.runscConfigPath }, source: INSTALL_SCRIPT };
  }
  return { runtime_type: 'io.containerd.runc.v2', options: { BinaryName: `${i.binaryPath}/runsc` }, source: HARNESS_CHOICE };
});

export type RunscFlags = { 'net-raw': 'true' | 'false'; debug: 'false'; nvproxy: 'false' };

/**
 * runsc.toml's `[runsc_config]` for the user's configFlags: only net-raw is honoured, and only
 * "true"/"false" (values.go: `key == "net-raw" && (value == "true" || value == "false")`);
 * every other key is ignored; net-raw defaults to "false" (runsc's own default). debug and nvproxy
 * stay "false" (or absent): newer extension versions also pass `debug: "true"` and `nvproxy: "true"`
 * through, but this profile, like the harness's documented configFlags, honours net-raw only.
 */
export const runscFlags = rule(VALUES, (configFlags: Record<string, string>): RunscFlags => {
  const v = configFlags['net-raw'];
  return { 'net-raw': v === 'true' || v === 'false' ? v : 'false', debug: 'false', nvproxy: 'false' };
});

/**
 * Keys a harness writes into runsc.toml beyond the extension's, documented in its README (its own
 * choice, not an upstream rule): e.g. a provider that must set `systemd-cgroup` on systemd-cgroup
 * nodes. Empty until such a key is documented.
 */
export const HARNESS_RUNSC_KEYS: readonly string[] = [];

/**
 * What runsc.toml may hold: the install script writes `[runsc_config]` with the configFlags and
 * nothing else; values.go passes net-raw, debug and nvproxy. A key outside that set changes runsc's
 * behaviour in a way the ContainerRuntime does not say (a hand edit, another installer).
 */
/**
 * runsc's own sidecar policies, which gVisor asks operators to set in runsc.toml ahead of its
 * default turning STRICT (gvisor runsc/config/flags.go): the runsc-installation suite reads them
 * there (README "Sidecars"), so a runsc.toml may carry them without being foreign.
 */
export const GVISOR_POLICY_KEYS: readonly string[] = ['sidecar-usage-policy', 'sidecar-release-enforcement-policy'];

export const runscTomlKeys = rule(`${INSTALL_SCRIPT} (runsc.toml: "[runsc_config]" + configFlags); ${VALUES}; gvisor runsc/config/flags.go (sidecar policies)`, (extra: readonly string[] = HARNESS_RUNSC_KEYS) => ({
  tables: ['runsc_config'],
  runscConfig: ['net-raw', 'debug', 'nvproxy', ...GVISOR_POLICY_KEYS, ...extra],
}));

/** The keys of a parsed runsc.toml that runscTomlKeys does not admit, as dotted paths. */
export function unexpectedRunscKeys(doc: Toml, extra: readonly string[] = HARNESS_RUNSC_KEYS): string[] {
  const allowed = runscTomlKeys(extra);
  const out: string[] = [];
  for (const [k, v] of Object.entries(doc)) {
    if (!allowed.tables.includes(k)) out.push(k);
    else if (v && typeof v === 'object' && !Array.isArray(v)) for (const f of Object.keys(v as Toml)) if (!allowed.runscConfig.includes(f)) out.push(`${k}.${f}`);
  }
  return out;
}

/** The two binaries the install script puts in the ContainerRuntime's binaryPath (the integration test checks both). */
export const binaries = rule(`${INSTALL_SCRIPT}; ${INTEGRATION_TEST}`, (binaryPath: string) => ({
  runsc: `${binaryPath}/runsc`,
  shim: `${binaryPath}/containerd-shim-runsc-v1`,
}));

/** gVisor is enabled per worker pool: exactly the pools whose ContainerRuntime asks for it, nowhere else. */
export const gvisorOnPool = rule(`${README} ("enable the gVisor container runtime sandbox for a worker pool")`, (pools: readonly string[], pool: string): boolean => pools.includes(pool));

export const GVISOR_NODE_LABEL = 'containerruntime.worker.gardener.cloud/gvisor';

/** The RuntimeClass the extension deploys: name gvisor, handler runsc, scheduled onto the gVisor pool's label. */
export const runtimeClass = rule(RUNTIME_CLASS, (name: string, handler: string) => ({
  name,
  handler,
  scheduling: { nodeSelector: { [GVISOR_NODE_LABEL]: 'true' } as Record<string, string> },
}));

/** The extension's integration test counts the lines of the sandbox's dmesg matching gVisor (`grep -i -c gVisor`): exactly 1. */
export const dmesgGVisorLines = rule(`${INTEGRATION_TEST} (dmesg | grep -i -c gVisor == 1)`, (dmesg: string): { count: number; expected: 1 } => ({
  count: dmesg.split('\n').filter((l) => /gvisor/i.test(l)).length,
  expected: 1,
}));
