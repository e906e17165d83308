// The verbs of the CLI as functions (up, install, run, down, doctor, warm, repro), above clusters/
// and harness/: they reach the cluster only through its provider and ask it for capabilities.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import Table from 'cli-table3';
import { stringify as stringifyYaml } from 'yaml';
import { file, tool } from '../clusters/common/tools.ts';
import { applyManifest, capabilitiesOf, poolsOf, providerFor, reproConfig } from '../clusters/index.ts';
import type { ClusterProvider, Finding } from '../clusters/provider.ts';
import { buildGVisor, criProtoPath, gvisorBinaries, type GVisorBinaries } from '../harness/binaries.ts';
import { CAPABILITY_NAMES } from '../harness/capabilities.ts';
import { type Config, type NodeConfig, type SuiteName, SUITE_NAMES, SUITE_NEEDS, chooseSuites, effectiveRunscFlags, nodeConfig } from '../harness/config.ts';
import { ConfigError } from '../harness/errors.ts';
import { applyImageBuilderVars, loadImageBuilderVars } from '../harness/imagebuilder.ts';
import { buildTestImage, importTestImage, type TestImage } from '../harness/image.ts';
import { INSTALL_RULES, installNode, recordTestImage, type InstallRules, type PlannedChange } from '../harness/installer.ts';
import { log, step } from '../harness/log.ts';
import { loadManifest } from '../harness/manifests.ts';
import { mapLimit, settleAll } from '../harness/map-limit.ts';
import { openNode } from '../harness/node.ts';
import { newRunId } from '../harness/rundir.ts';
import { registerKnownSecrets } from '../harness/redact.ts';
import { exitCodeOf, table, warningLines, type RunSummary } from '../harness/report.ts';
import { loadRunSummary, rerunSelection, type RerunSelection } from '../harness/rerun.ts';
import { releaseClusterLock, withClusterLock } from '../harness/state.ts';
// suite-runner.ts (vitest and Vite, ~50 MB built, ~200 MB through tsx) is loaded by the verbs that run suites only.

/** How to start this CLI in a child: its entry beside this file (.ts from source through tsx, .js when built). */
const CLI_ENTRY = import.meta.url.endsWith('.ts') ? ['--import', 'tsx', fileURLToPath(new URL('./gvisor-e2e.ts', import.meta.url))] : [fileURLToPath(new URL('./gvisor-e2e.js', import.meta.url))];

/** Holds the cluster's lock (where its provider keeps state on this machine) while a verb runs. */
function locked<R>(provider: ClusterProvider, verb: string, fn: () => Promise<R>): Promise<R> {
  const dir = provider.info().stateDir;
  return dir ? withClusterLock(dir, verb, fn) : fn();
}

/** The provider of a config, with the secrets it holds registered for redaction first. */
export function clusterOf(cfg: Config): ClusterProvider {
  const p = providerFor(cfg);
  const s = p.secrets();
  registerKnownSecrets(s.keyFiles, s.kubeconfigs);
  return p;
}

/** Suites selected by the config and the CLI (--suite / --skip), by what the cluster offers. */
export function selectSuites(cfg: Config, only?: string[], skip: string[] = []): SuiteName[] {
  return chooseSuites(cfg, capabilitiesOf(cfg), only, skip);
}

export function up(cfg: Config): Promise<NodeConfig[]> {
  return upWith(clusterOf(cfg));
}

function upWith(p: ClusterProvider): Promise<NodeConfig[]> {
  const { provider, cluster } = p.info();
  return locked(p, 'up', () => step(`cluster up (${provider} "${cluster}")`, () => p.up()));
}

export function down(cfg: Config, opts: { uninstall?: boolean } = {}): Promise<void> {
  return downWith(clusterOf(cfg), opts);
}

function downWith(p: ClusterProvider, opts: { uninstall?: boolean } = {}): Promise<void> {
  const { provider, cluster } = p.info();
  return locked(p, 'down', async () => {
    if (opts.uninstall !== false) await p.uninstall();
    await step(`cluster down (${provider} "${cluster}")`, () => p.down());
  });
}

export interface InstallOutcome {
  bins?: GVisorBinaries;
  image: TestImage;
}

/** `rules`: the installer's decisions (tests swap in a wrong one to show that a suite catches it). */
export function install(cfg: Config, nodes: NodeConfig[], rules: InstallRules = INSTALL_RULES): Promise<InstallOutcome> {
  return installWith(clusterOf(cfg), cfg, nodes, rules);
}

function installWith(provider: ClusterProvider, cfg: Config, nodes: NodeConfig[], rules: InstallRules = INSTALL_RULES): Promise<InstallOutcome> {
  return locked(provider, 'install', () => installNodes(provider, cfg, nodes, rules));
}

async function installNodes(provider: ClusterProvider, cfg: Config, nodes: NodeConfig[], rules: InstallRules): Promise<InstallOutcome> {
  effectiveRunscFlags(cfg.gvisor.configFlags); // warns once about ignored flags
  const { installsNodes, kubernetesApi } = provider.info().capabilities;
  // The same rule that decides where gVisor goes decides whether its binaries are needed.
  const gvisorNode = (n: NodeConfig) => rules.gvisorNode(cfg, n);
  const bins = installsNodes && nodes.some(gvisorNode) ? await gvisorBinaries(cfg.gvisor) : undefined;
  const image = await step('build the busybox test image', () => buildTestImage());
  // Install only where the cluster lets the harness install, and only where it can reach the node.
  const unreachable = nodes.filter((n) => n.access.type === 'api');
  if (installsNodes && unreachable.some(gvisorNode)) {
    const names = unreachable.filter(gvisorNode).map((n) => n.name);
    throw new ConfigError('config', [{ path: 'cluster.nodes', message: `install: true needs SSH access to every gVisor-pool node; none for ${names.join(', ')}` }]);
  }
  if (unreachable.length) log('info', `not reachable except through the API (nothing installed, test image not imported): ${unreachable.map((n) => n.name).join(', ')}`);
  await mapLimit(nodes.filter((n) => n.access.type !== 'api'), 4, async (n) => {
    const node = openNode(n);
    try {
      await step(`${installsNodes ? 'install on' : 'import the test image on'} ${n.name} (pool ${n.pool}${gvisorNode(n) ? ', gVisor' : ''})`, async () => {
        if (installsNodes) {
          // Recorded before the first change: down undoes a node whose install failed half-way too.
          provider.recordOnNode(n.name, 'files');
          const r = await installNode(node, cfg, bins, rules);
          log('info', `[${n.name}] ${r.changed.length ? `changed: ${r.changed.join(', ')}` : 'already up to date'} (os ${r.facts.osFamily}${r.facts.systemd ? ', systemd' : ''})`);
        }
        // A node the harness installs on records the image in its own journal (uninstall removes it);
        // where it only tests, the provider records it.
        const before = installsNodes ? (missing: string[]) => recordTestImage(node, missing) : undefined;
        if ((await importTestImage(node, image, n.paths.containerdSocket, n.paths.tmpDir, undefined, before)) && !installsNodes) provider.recordOnNode(n.name, 'image');
      });
    } finally {
      await node.close();
    }
  });
  if (kubernetesApi && installsNodes) {
    await step(`RuntimeClass "${cfg.gvisor.runtimeClassName}" and node labels`, () => provider.installKubernetesObjects(nodes));
  }
  return { bins, image };
}

export interface RunOptions {
  suites?: string[];
  skip?: string[];
  /** Keep the cluster after the run (default: remove what this run created). */
  keep?: boolean;
  /** Skip the install step (the cluster was installed before). */
  noInstall?: boolean;
  /** The config file, so that a signal can run `down` in a child process. */
  configPath?: string;
  /** Retry a failing check up to N times (flaky infrastructure); every attempt stays in the Allure report. */
  retries?: number;
  /** Re-run only the failed and broken checks of this run (a run id or a summary.json path; '' = the latest run). */
  rerunFailed?: string;
}

/** The checks `--rerun-failed` selects from an earlier run of the same cluster. */
function rerunOf(cfg: Config, ref: string): RerunSelection {
  const { summary, path } = loadRunSummary(ref || undefined, cfg.reportsDir, '--rerun-failed');
  if (summary.cluster !== cfg.cluster.name) {
    throw new ConfigError('command line', [{ path: '--rerun-failed', message: `${path} is a run of cluster "${summary.cluster}", not of "${cfg.cluster.name}" (this config)` }]);
  }
  const sel = rerunSelection(summary);
  if (sel.checks.length === 0) throw new ConfigError('command line', [{ path: '--rerun-failed', message: `run ${summary.runId} (${path}) has no failed or broken check to re-run` }]);
  const unknown = sel.suites.filter((x) => !(SUITE_NAMES as readonly string[]).includes(x));
  if (unknown.length) throw new ConfigError(path, [{ path: 'checks', message: `suite(s) ${unknown.join(', ')} are not suites of this gvisor-e2e (${SUITE_NAMES.join(', ')})` }]);
  return sel;
}

/** up → install → suites → (down). The main job. */
export async function run(cfg: Config, opts: RunOptions = {}): Promise<RunSummary> {
  // A rerun takes the earlier run's suites; --suite/--skip do not apply to it.
  const rerun = opts.rerunFailed !== undefined ? rerunOf(cfg, opts.rerunFailed) : undefined;
  if (rerun && (opts.suites?.length || opts.skip?.length)) throw new ConfigError('command line', [{ path: '--rerun-failed', message: 'runs the failed checks of the earlier run; it does not take --suite or --skip' }]);
  const suites = rerun ? (rerun.suites as SuiteName[]) : selectSuites(cfg, opts.suites, opts.skip);
  const provider = clusterOf(cfg);
  const info = provider.info();
  // What the run made is removed after it (the cluster, or what it added to one it does not own).
  const cleansUp = info.capabilities.cleansUpAfterRun && !opts.keep;
  let cleaned = false;
  const cleanup = async () => {
    if (cleaned || !cleansUp) return;
    cleaned = true;
    await downWith(provider).catch((e: Error) => log('error', `cleanup failed: ${e.message}; run \`gvisor-e2e down\``));
  };
  const onSignal = (sig: NodeJS.Signals) => {
    log('warn', `${sig}: stopping and cleaning up`);
    const code = sig === 'SIGINT' ? 130 : 143;
    if (cleansUp && !cleaned && opts.configPath) {
      // Synchronously, in a child: the test runner's own signal handler would end this process
      // before an asynchronous cleanup finished. The child takes the cluster's lock: give it up.
      cleaned = true;
      if (info.stateDir) releaseClusterLock(info.stateDir);
      const r = spawnSync(process.execPath, [...CLI_ENTRY, '--config', opts.configPath, 'down'], { stdio: ['ignore', 'inherit', 'inherit'] });
      if (r.status !== 0) log('error', `cleanup failed; run \`gvisor-e2e down\``);
      process.exit(code);
    }
    void cleanup().finally(() => process.exit(code));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await locked(provider, 'run', async () => {
      try {
        const nodes = await upWith(provider);
        const outcome = opts.noInstall ? { image: await buildTestImage() } : await step('install gVisor', () => installWith(provider, cfg, nodes));
        const runId = newRunId();
        // Before the suites make anything: down after a crash removes this run's namespaces too.
        provider.recordRun(runId);
        const { runSuites } = await import('../harness/suite-runner.ts');
        return await runSuites(cfg, nodes, suites, {
          runId,
          image: { image: outcome.image.image, pause: outcome.image.pause },
          expectedVersion: outcome.bins?.expectedVersion ?? (cfg.gvisor.version === 'latest' ? '' : cfg.gvisor.version),
          kubeconfig: provider.kubeconfig(),
          capabilities: info.capabilities,
          retries: opts.retries,
          clusterLogs: (dir) => provider.collectLogs(dir),
          rerun,
        });
      } finally {
        await cleanup();
      }
    });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/**
 * `repro`: a cluster made from a customer's manifest (and image-builder variables), every suite, a
 * report. Only providers that can reshape their pools make one.
 */
export async function repro(base: Config, source: string, manifest: string, opts: { imageBuilder?: string; keep?: boolean; suite?: string[]; skip?: string[] }): Promise<RunSummary> {
  const made = reproConfig(base);
  if (!made) {
    throw new ConfigError(source, [{ path: 'cluster.provider', message: `repro makes a cluster from the manifest's pools, which provider "${base.cluster.provider}" cannot (it needs ${CAPABILITY_NAMES.reshapesPools}, or hosts of its own it can match the manifest's pools to; use provider "local", "kind" or "vm")` }]);
  }
  let cfg = applyManifest(made, loadManifest(manifest));
  if (opts.imageBuilder) cfg = applyImageBuilderVars(cfg, loadImageBuilderVars(opts.imageBuilder));
  const pools = poolsOf(cfg).map((p) => `${p}${cfg.gvisor.pools.includes(p) ? ' (gVisor)' : ''}`).join(', ');
  log('info', `repro of ${manifest}: pools ${pools}; handler ${cfg.gvisor.handler} at ${cfg.gvisor.binaryPath}; configFlags ${JSON.stringify(cfg.gvisor.configFlags)}`);
  const summary = await run(cfg, { keep: opts.keep, configPath: source, suites: opts.suite, skip: opts.skip });
  process.stdout.write(`report: ${join(cfg.reportsDir, summary.runId, 'summary.md')}\n`);
  return summary;
}

/**
 * Builds every cached artefact the config's cluster uses, so CI's first run is not a cold build.
 * The builds run at once: on a new machine much of each is fetching Go modules or Debian packages,
 * which overlaps the others' compiling.
 */
export async function warm(cfg: Config): Promise<void> {
  await settleAll([criProtoPath(), buildGVisor(), clusterOf(cfg).warm()]);
}

/** Says what this machine and the nodes lack for the chosen cluster, and how to get it, before a long run fails half way. */
export async function doctor(cfg: Config): Promise<boolean> {
  const major = Number(process.versions.node.split('.')[0]);
  const f: Finding[] = [
    { check: 'Node.js >= 20', ok: major >= 20, detail: process.version, fix: major >= 20 ? undefined : 'install Node.js 20' },
    tool('go', 'golang (or the Go toolchain)', 'builds runsc, containerd and fetches the CRI proto from Go modules'),
    file('/bin/busybox', 'busybox-static', 'test image'),
    ...(await clusterOf(cfg).doctor()),
  ];
  const t = new Table({ head: ['check', 'ok', 'detail', 'how to fix'], style: { head: [], border: [] }, colWidths: [48, 5, 50, 40], wordWrap: true });
  for (const x of f) t.push([x.check, x.ok ? 'yes' : 'NO', x.detail, x.fix ?? '']);
  process.stdout.write(`${t.toString()}\n`);
  return f.every((x) => x.ok);
}


/** A suite and why it does or does not run with this config and these --suite/--skip arguments. */
export interface SuitePlan {
  suite: SuiteName;
  runs: boolean;
  why: string;
}

/** `run --list`, the suites part: from the config alone, without touching a node. */
export function suitePlan(cfg: Config, only?: string[], skip: string[] = []): SuitePlan[] {
  const selected = new Set(selectSuites(cfg, only, skip));
  const caps = capabilitiesOf(cfg);
  return SUITE_NAMES.map((s) => {
    const lacks = SUITE_NEEDS[s].filter((c) => !caps[c]).map((c) => CAPABILITY_NAMES[c]);
    if (selected.has(s)) return { suite: s, runs: true, why: lacks.length ? `selected, but needs ${lacks.join(' and ')}: its checks will be skipped` : 'selected' };
    if (skip.includes(s)) return { suite: s, runs: false, why: 'skipped by --skip' };
    if (cfg.suites.skip.includes(s)) return { suite: s, runs: false, why: 'skipped by suites.skip in the config' };
    if (only?.length) return { suite: s, runs: false, why: 'not named by --suite' };
    if (cfg.suites.include) return { suite: s, runs: false, why: 'not in suites.include of the config' };
    return { suite: s, runs: false, why: `needs ${lacks.join(' and ')}, which this cluster (provider "${cfg.cluster.provider}") does not offer` };
  });
}

/**
 * `run --list`: the suites that would run and why others would not, and the checks each declares
 * per pool (a pool's nodes all get the same checks). Brings up nothing and opens no node.
 */
export async function listRun(cfg: Config, opts: Pick<RunOptions, 'suites' | 'skip' | 'rerunFailed'> = {}): Promise<string> {
  const provider = clusterOf(cfg);
  const rerun = opts.rerunFailed !== undefined ? rerunOf(cfg, opts.rerunFailed) : undefined;
  const plan = rerun ? SUITE_NAMES.map((s) => ({ suite: s, runs: rerun.suites.includes(s), why: rerun.suites.includes(s) ? `has failed or broken checks in run ${rerun.of}` : rerun.ran.includes(s) ? `all its checks passed or were skipped in run ${rerun.of}` : `not part of run ${rerun.of}` })) : suitePlan(cfg, opts.suites, opts.skip);
  const lines = [`cluster "${cfg.cluster.name}" (provider ${cfg.cluster.provider}); gVisor pools: ${cfg.gvisor.pools.join(', ') || '(none)'}`, '', 'suites:'];
  for (const p of plan) lines.push(`  ${p.runs ? 'run ' : 'skip'}  ${p.suite.padEnd(24)} ${p.why}`);
  // One stand-in node per pool: a suite declares the same checks on each node of a pool.
  const standIns = poolsOf(cfg).map((pool) => ({ ...nodeConfig({ name: 'x', pool, access: { type: 'api' } }), name: `<each node of pool ${pool}>` }));
  const runs = plan.filter((p) => p.runs).map((p) => p.suite);
  // Suites that use the API build their clients while declaring checks: a kubeconfig no one calls.
  let kubeconfig: string | undefined;
  if (provider.info().capabilities.kubernetesApi) {
    kubeconfig = join(mkdtempSync(join(tmpdir(), 'gvisor-e2e-list-')), 'kubeconfig');
    writeFileSync(kubeconfig, 'apiVersion: v1\nkind: Config\nclusters: [{name: list, cluster: {server: "https://127.0.0.1:9"}}]\nusers: [{name: list, user: {}}]\ncontexts: [{name: list, context: {cluster: list, user: list}}]\ncurrent-context: list\n', { mode: 0o600 });
  }
  const { listChecks } = await import('../harness/suite-runner.ts');
  const checks = await listChecks(cfg, standIns, runs, provider.info().capabilities, kubeconfig).finally(() => kubeconfig && rmSync(dirname(kubeconfig), { recursive: true, force: true }));
  lines.push('', 'checks:');
  for (const s of runs) {
    lines.push(`  ${s}:`);
    const mine = checks.filter((c) => c.suite === s);
    const selected = rerun ? rerun.checks.filter((c) => c.suite === s) : undefined;
    if (selected) for (const c of selected) lines.push(`    [${c.node}] ${c.name}  (${c.state} in run ${rerun!.of})`);
    else if (mine.length === 0) lines.push('    (none declared for this cluster\'s pools)');
    else for (const c of mine) lines.push(`    ${c.skipped ? 'skip ' : ''}[${c.node}] ${c.name}`);
  }
  return `${lines.join('\n')}\n`;
}

/** `report [run]`: a run's verdict table, warnings and first failures again, from its summary.json. */
export function report(cfg: Config, ref?: string): { text: string; summary: RunSummary } {
  const { summary, path } = loadRunSummary(ref, cfg.reportsDir, 'run');
  const bad = summary.checks.filter((c) => c.state === 'failed' || c.state === 'broken');
  const lines = [
    `run ${summary.runId} of cluster "${summary.cluster}" (${path}): ${summary.state.toUpperCase()}, exit code ${exitCodeOf(summary)}, started ${summary.startedAt}, ${(summary.durationMs / 1000).toFixed(1)}s`,
    ...(summary.continues ? [`continues run ${summary.continues.runId} (re-ran its ${summary.continues.checks} failed or broken check(s))`] : []),
    table(summary),
    ...warningLines(summary),
  ];
  if (bad.length) {
    lines.push('', `failures (${bad.length}${bad.length > 10 ? ', first 10' : ''}):`);
    for (const c of bad.slice(0, 10)) lines.push(`  ${c.state.toUpperCase()} ${c.suite} [${c.node}] ${c.name}: ${(c.message ?? '').split('\n')[0]}`);
  }
  if (summary.diagnostics?.length) lines.push('', `diagnostics: ${summary.diagnostics.map((d) => join(dirname(path), d)).join(', ')}`);
  return { text: `${lines.join('\n')}\n`, summary };
}

/** A unified diff of what `install` would write over what the node has (diff(1), as Gardener's install script compares). */
export function changeDiff(c: PlannedChange): string {
  const mode = c.mode ? ` (mode ${c.mode})` : '';
  if (c.after === undefined) return `--- ${c.path}\n(would be removed: gvisor-e2e created it and the config no longer asks for it)\n`;
  if (Buffer.isBuffer(c.after)) {
    const sum = createHash('sha256').update(c.after).digest('hex');
    return `--- ${c.path}\n(binary: ${c.before === undefined ? 'would be created' : 'would be replaced'}${mode}, ${c.after.length} bytes, sha256 ${sum})\n`;
  }
  const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-diff-'));
  try {
    writeFileSync(join(dir, 'a'), c.before ?? '');
    writeFileSync(join(dir, 'b'), c.after);
    const r = spawnSync('diff', ['-u', '--label', c.before === undefined ? '/dev/null' : c.path, '--label', `${c.path}${mode}`, join(dir, 'a'), join(dir, 'b')], { encoding: 'utf8' });
    if (r.status !== 1) throw new Error(`diff of ${c.path} failed: ${r.error?.message ?? r.stderr}`);
    return r.stdout;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * `install --dry-run`: per node, the files install would change (as diffs) and the Kubernetes
 * objects it would create. The nodes are only read: no lock, no journal, no restart, no image import.
 */
export async function installDryRun(cfg: Config, nodes: NodeConfig[], rules: InstallRules = INSTALL_RULES): Promise<string> {
  const provider = clusterOf(cfg);
  const { installsNodes, kubernetesApi } = provider.info().capabilities;
  const out: string[] = [];
  if (!installsNodes) out.push(`provider "${cfg.cluster.provider}" is not installed by the harness (it tests the cluster as it is): install would only import the test image where containerd lacks it`);
  else {
    const bins = nodes.some((n) => rules.gvisorNode(cfg, n)) ? await gvisorBinaries(cfg.gvisor) : undefined;
    for (const n of nodes) {
      if (n.access.type === 'api') {
        out.push(`## ${n.name}: reachable only through the API; install needs SSH access there`, '');
        continue;
      }
      const node = openNode(n);
      try {
        const planned: PlannedChange[] = [];
        await installNode(node, cfg, bins, rules, planned);
        const restarts = planned.some((c) => c.path === n.paths.containerdConfig || c.path.includes('containerd.service.d/'));
        out.push(`## ${n.name} (pool ${n.pool}${rules.gvisorNode(cfg, n) ? ', gVisor' : ''}): ${planned.length ? `${planned.length} file(s) would change${restarts ? '; containerd would restart' : ''}` : 'up to date, nothing would change'}`);
        for (const c of planned) out.push(changeDiff(c));
        out.push('');
      } finally {
        await node.close();
      }
    }
  }
  const kubeconfig = provider.kubeconfig();
  if (kubernetesApi && installsNodes && kubeconfig) {
    const kube = await import('../harness/kube.ts');
    const { NodeV1Api, CoreV1Api } = await import('@kubernetes/client-node');
    const kc = kube.kubeConfig(kubeconfig);
    const rc = kube.runtimeClass(cfg);
    const have = await kc.makeApiClient(NodeV1Api).readRuntimeClass({ name: rc.metadata!.name! }).catch(() => undefined);
    out.push('## Kubernetes objects', have ? `RuntimeClass ${rc.metadata!.name} exists (handler ${have.handler}); install would converge it to:` : `RuntimeClass ${rc.metadata!.name} would be created:`, stringifyYaml(rc));
    const registered = new Map((await kc.makeApiClient(CoreV1Api).listNode()).items.map((x) => [x.metadata?.name, x.metadata?.labels ?? {}] as const));
    for (const n of nodes.filter((x) => registered.has(x.name))) {
      const want = rules.gvisorNode(cfg, n) ? 'true' : undefined;
      const now = registered.get(n.name)![kube.GVISOR_NODE_LABEL];
      if (now !== want) out.push(`node ${n.name}: label ${kube.GVISOR_NODE_LABEL} ${want ? `would be set to "${want}"` : 'would be removed'} (now ${now === undefined ? 'unset' : `"${now}"`})`);
    }
  }
  return `${out.join('\n')}\n`;
}
