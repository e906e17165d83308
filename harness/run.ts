import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { startVitest } from 'vitest/node';
import { providerFor } from '../clusters/index.ts';
import { vmNodeConfig } from '../clusters/vm/index.ts';
import { buildContainerd, buildGVisor, cacheRoot, criProtoPath, gvisorBinaries, type GVisorBinaries } from './binaries.ts';
import { ensureNspawnRootfs } from '../clusters/local/nspawn-node.ts';
import { buildKubernetes } from '../clusters/kube/build.ts';
import { type Config, type NodeConfig, type SuiteName, durationMs, effectiveRunscFlags, selectSuites } from './config.ts';
import { buildTestImage, importTestImage, type TestImage } from './image.ts';
import { installNode, isGVisorNode, uninstallNode } from './installer.ts';
import { log, step } from './log.ts';
import { ConfigError } from './errors.ts';
import { openNode } from './node.ts';
import { CriClient } from './cri.ts';
import { removeLeftoverPods } from './sandbox.ts';
import { SummaryReporter, summarize, table, writeReports, type RunSummary } from './report.ts';
import { PLAN_ENV, type RunPlan } from './suite.ts';
import { ROOT_DIR } from './paths.ts';
import { InfrastructureError } from './errors.ts';
import { writeHtmlReports } from './allure.ts';

// The verbs of the CLI, as functions: up (cluster), install (gVisor + containerd customizations),
// run (suites → reports), down. Each is usable alone; `run` does up + install + suites.


/** Runs fn over items with at most `limit` in flight. */
export async function mapLimit<T, R>(items: T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  });
  await Promise.all(workers);
  return out;
}

export async function up(cfg: Config): Promise<NodeConfig[]> {
  return step(`cluster up (${cfg.cluster.provider} "${cfg.cluster.name}")`, () => providerFor(cfg).up());
}

export async function down(cfg: Config, opts: { uninstall?: boolean } = {}): Promise<void> {
  // vm hosts: the install comes off before the provider removes the containerd it provisioned.
  if ((cfg.cluster.provider === 'nodes' && opts.uninstall !== false) || cfg.cluster.provider === 'vm') {
    // Hosts we did not create: undo what we installed on them, nothing else.
    const hosts = cfg.cluster.provider === 'vm' ? cfg.cluster.hosts.map(vmNodeConfig) : cfg.cluster.nodes;
    await mapLimit(hosts, 4, async (n) => {
      const node = openNode(n);
      try {
        // Pods a crashed run left behind first (found by the harness's own label), then the install.
        const cri = await CriClient.connect(node, n.paths.containerdSocket).catch(() => undefined);
        if (cri) {
          const removed = await removeLeftoverPods(cri).catch(() => 0);
          if (removed) log('info', `[${n.name}] removed ${removed} leftover pod sandbox(es)`);
          cri.close();
        }
        const undone = await step(`uninstall from ${n.name}`, () => uninstallNode(node, cfg));
        log('info', `[${n.name}] restored/removed: ${undone.join(', ') || 'nothing'}`);
      } finally {
        await node.close();
      }
    });
  }
  await step(`cluster down (${cfg.cluster.provider} "${cfg.cluster.name}")`, () => providerFor(cfg).down());
}

export interface InstallOutcome {
  bins?: GVisorBinaries;
  image: TestImage;
}

export async function install(cfg: Config, nodes: NodeConfig[]): Promise<InstallOutcome> {
  effectiveRunscFlags(cfg.gvisor.configFlags); // warns once about ignored flags
  const needBins = (cfg.cluster.provider !== 'existing' || cfg.cluster.install) && nodes.some((n) => isGVisorNode(cfg, n));
  const bins = needBins ? await gvisorBinaries(cfg.gvisor) : undefined;
  const image = await step('build the busybox test image', () => buildTestImage());
  const provider = providerFor(cfg);
  const kubeconfig = provider.kubeconfig();
  // An existing cluster: install only with `install: true`, and only where the harness can reach the node.
  const installFiles = cfg.cluster.provider !== 'existing' || cfg.cluster.install;
  const unreachable = nodes.filter((n) => n.access.type === 'api');
  if (installFiles && unreachable.some((n) => isGVisorNode(cfg, n))) {
    const names = unreachable.filter((n) => isGVisorNode(cfg, n)).map((n) => n.name);
    throw new ConfigError('config', [{ path: 'cluster.nodes', message: `install: true needs SSH access to every gVisor-pool node; none for ${names.join(', ')}` }]);
  }
  if (unreachable.length) log('info', `not reachable except through the API (nothing installed, test image not imported): ${unreachable.map((n) => n.name).join(', ')}`);
  await mapLimit(nodes.filter((n) => n.access.type !== 'api'), 4, async (n) => {
    const node = openNode(n);
    try {
      await step(`${installFiles ? 'install on' : 'import the test image on'} ${n.name} (pool ${n.pool}${isGVisorNode(cfg, n) ? ', gVisor' : ''})`, async () => {
        if (installFiles) {
          const r = await installNode(node, cfg, bins);
          log('info', `[${n.name}] ${r.changed.length ? `changed: ${r.changed.join(', ')}` : 'already up to date'} (os ${r.facts.osFamily}${r.facts.systemd ? ', systemd' : ''})`);
          if (r.changed.length) provider.recordOnNode?.(n.name, 'files');
        }
        if (await importTestImage(node, image, n.paths.containerdSocket, n.paths.tmpDir)) provider.recordOnNode?.(n.name, 'image');
      });
    } finally {
      await node.close();
    }
  });
  // The Kubernetes client is loaded only for clusters with an API (it costs ~80 MB per process).
  if (kubeconfig && installFiles) {
    await step(`RuntimeClass "${cfg.gvisor.runtimeClassName}" and node labels`, async () =>
      provider.installKubernetesObjects ? provider.installKubernetesObjects(nodes) : (await import('./kube.ts')).installKubernetesObjects(kubeconfig, cfg, nodes),
    );
  }
  return { bins, image };
}

export interface RunOptions {
  suites?: string[];
  skip?: string[];
  /** Keep a local cluster after the run (default: remove what this run created). */
  keep?: boolean;
  /** Skip the install step (the cluster was installed before). */
  noInstall?: boolean;
  /** The config file, so that a signal can run `down` in a child process. */
  configPath?: string;
  /** Retry a failing check up to N times (flaky infrastructure); every attempt stays in the Allure report. */
  retries?: number;
}

function newRunId(): string {
  const d = new Date();
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}-${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}-${randomBytes(2).toString('hex')}`;
}

/** Runs the selected suites with vitest against already-installed nodes; returns the summary. */
export async function runSuites(cfg: Config, nodes: NodeConfig[], suites: SuiteName[], outcome: InstallOutcome, retries = 0): Promise<RunSummary> {
  const runId = newRunId();
  const reportsRoot = resolve(cfg.reportsDir);
  const runDir = join(reportsRoot, runId);
  writingReports(runDir, () => mkdirSync(runDir, { recursive: true }));
  const plan: RunPlan = {
    runId,
    runDir,
    config: cfg,
    nodes,
    image: { image: outcome.image.image, pause: outcome.image.pause },
    expectedVersion: outcome.bins?.expectedVersion ?? (cfg.gvisor.version === 'latest' ? '' : cfg.gvisor.version),
    kubeconfig: providerFor(cfg).kubeconfig(),
  };
  const planFile = join(tmpdir(), `gvisor-e2e-plan-${runId}.json`);
  writeFileSync(planFile, JSON.stringify(plan), { mode: 0o600 });
  process.env[PLAN_ENV] = planFile;
  const reporter = new SummaryReporter();
  const startedAt = new Date();
  const testTimeout = 2 * durationMs(cfg.timeouts.container) + 60_000;
  try {
    const files = suites.map((s) => join(ROOT_DIR, 'suites', s, `${s}.suite.ts`)).filter((f) => existsSync(f));
    log('info', `▶ run suites: ${suites.join(', ')} on ${nodes.map((n) => n.name).join(', ')} (run ${runId})`);
    const vitest = await startVitest(
      'test',
      files,
      {
        root: ROOT_DIR,
        config: false,
        include: ['suites/**/*.suite.ts'],
        watch: false,
        reporters: [reporter, 'default', ['allure-vitest/reporter', { resultsDir: join(runDir, 'allure-results') }]],
        setupFiles: ['allure-vitest/setup'],
        testTimeout,
        hookTimeout: testTimeout,
        pool: 'forks',
        // Bounded: suite files in `suites` workers, nodes within a suite `nodes` at a time.
        maxWorkers: cfg.concurrency.suites,
        maxConcurrency: cfg.concurrency.nodes,
        fileParallelism: true,
        passWithNoTests: true,
        retry: retries,
      },
      { logLevel: 'error' },
    );
    await vitest.close();
  } finally {
    rmSync(planFile, { force: true });
  }
  const summary = summarize(runId, cfg.cluster.name, startedAt, reporter.modules, suites);
  // The verdict is printed before the reports are written, so a full disk does not hide it.
  process.stdout.write(`\n${table(summary)}\n`);
  writingReports(runDir, () => writeReports(runDir, summary));
  const html = await step('write HTML reports (Allure)', () => writeHtmlReports(runDir, runId, summary.suites.map((s) => s.name)));
  const latest = join(reportsRoot, 'latest');
  try {
    if (existsSync(latest) || isSymlink(latest)) unlinkSync(latest);
    symlinkSync(runId, latest);
  } catch {
    /* a reports dir on a filesystem without symlinks */
  }
  log('info', `reports: ${runDir} (summary.md, summary.json, junit/, ${html.length ? 'html/index.html' : 'no HTML'})`);
  return summary;
}

/**
 * A report that cannot be written (full disk, read-only or missing directory) breaks the run: the
 * error names the path and the errno, not just "ENOSPC: no space left on device, write".
 */
function writingReports<T>(runDir: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (!err.code) throw e;
    throw new InfrastructureError(`cannot write the reports to ${err.path ?? runDir}: ${err.code}${err.code === 'ENOSPC' ? ' (no space left on device)' : ''}: ${err.message}`, { cause: e });
  }
}

function isSymlink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/** Builds every cached artefact the local cluster uses, so CI's first run is not a cold build. */
export async function warm(): Promise<void> {
  await criProtoPath();
  await buildGVisor();
  await buildContainerd();
  await buildKubernetes();
  await step('build the busybox test image', () => buildTestImage());
  await step('prepare the Debian rootfs for systemd nodes', () => ensureNspawnRootfs({ cacheDir: join(cacheRoot(), 'rootfs'), onProgress: (m) => log('info', `  ${m}`) }));
}

/** up → install → suites → (down). The main job. */
export async function run(cfg: Config, opts: RunOptions = {}): Promise<RunSummary> {
  const suites = selectSuites(cfg, opts.suites, opts.skip);
  // Clusters the harness made are removed after the run; from an existing one, down removes only what this harness made there.
  const created = cfg.cluster.provider === 'local' || cfg.cluster.provider === 'kind' || cfg.cluster.provider === 'existing';
  let cleaned = false;
  const cleanup = async () => {
    if (cleaned || !created || opts.keep) return;
    cleaned = true;
    await down(cfg).catch((e: Error) => log('error', `cleanup failed: ${e.message}; run \`gvisor-e2e down\``));
  };
  const onSignal = (sig: NodeJS.Signals) => {
    log('warn', `${sig}: stopping and cleaning up`);
    const code = sig === 'SIGINT' ? 130 : 143;
    if (created && !opts.keep && !cleaned && opts.configPath) {
      // Synchronously, in a child: the test runner's own signal handler would end this process
      // before an asynchronous cleanup finished.
      cleaned = true;
      const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT_DIR, 'bin', 'gvisor-e2e.ts'), '--config', opts.configPath, 'down'], { stdio: ['ignore', 'inherit', 'inherit'] });
      if (r.status !== 0) log('error', `cleanup failed; run \`gvisor-e2e down\``);
      process.exit(code);
    }
    void cleanup().finally(() => process.exit(code));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const nodes = await up(cfg);
    const outcome = opts.noInstall ? { image: await buildTestImage() } : await step('install gVisor', () => install(cfg, nodes));
    return await runSuites(cfg, nodes, suites, outcome, opts.retries);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}
