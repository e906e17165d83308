// Runs the selected suite files with vitest against nodes that are up and installed, then writes
// the verdict table, summary, JUnit and Allure HTML into the run's directory.
import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createVitest } from 'vitest/node';
import type { Capabilities } from './capabilities.ts';
import { type Config, type NodeConfig, type SuiteName, durationMs } from './config.ts';
import { log, step } from './log.ts';
import { SummaryReporter, suiteOf, summarize, table, warningLines, writeReports, type RunSummary } from './report.ts';
import { newRunId, RunDir, writingReports } from './rundir.ts';
import { PLAN_ENV, type RunPlan } from './suite.ts';
import { ROOT_DIR } from './paths.ts';
import { writeHtmlReports } from './allure.ts';
import { redact } from './redact.ts';
import { ProgressReporter } from './progress.ts';
import type { RerunSelection } from './rerun.ts';
import { collectDiagnostics } from './diagnostics.ts';

export interface SuiteRunInputs {
  image: { image: string; pause: string };
  /** What `runsc --version` must contain ('' = any). */
  expectedVersion: string;
  kubeconfig?: string;
  capabilities: Capabilities;
  /** Retry a failing check up to N times; every attempt stays in the Allure report. */
  retries?: number;
  /** The run's id (default: a new one). */
  runId?: string;
  /** `--rerun-failed`: only these checks of an earlier run (its suites, by vitest test-name pattern). */
  rerun?: RerunSelection;
  /** On failure: the provider's own cluster logs (`kind export logs`) into a directory of the run; returns where. */
  clusterLogs?: (runDir: string) => Promise<string | undefined>;
}

/** A suite's file: .ts from source (tsx), .js in the built package (dist/). */
function suiteFile(suite: string): string {
  const ts = join(ROOT_DIR, 'suites', suite, `${suite}.suite.ts`);
  return existsSync(ts) ? ts : ts.replace(/\.ts$/, '.js');
}

/** Runs the selected suites with vitest against already-installed nodes; returns the summary. */
export async function runSuites(cfg: Config, nodes: NodeConfig[], suites: SuiteName[], inputs: SuiteRunInputs): Promise<RunSummary> {
  const run = new RunDir(cfg.reportsDir, inputs.runId ?? newRunId());
  run.create();
  const plan: RunPlan = {
    runId: run.runId,
    reportsDir: run.reportsDir,
    config: cfg,
    nodes,
    image: inputs.image,
    expectedVersion: inputs.expectedVersion,
    kubeconfig: inputs.kubeconfig,
    capabilities: inputs.capabilities,
  };
  const planFile = join(tmpdir(), `gvisor-e2e-plan-${run.runId}.json`);
  writeFileSync(planFile, JSON.stringify(plan), { mode: 0o600 });
  process.env[PLAN_ENV] = planFile;
  const reporter = new SummaryReporter();
  const startedAt = new Date();
  const testTimeout = 2 * durationMs(cfg.timeouts.container) + 60_000;
  // A selected suite without its file is reported broken, never silently left out.
  const missingSuites = suites.filter((s) => !existsSync(suiteFile(s)));
  let unhandledErrors: { name?: string; message?: string }[] = [];
  try {
    const present = suites.filter((s) => existsSync(suiteFile(s)));
    const what = inputs.rerun ? `the failed and broken checks of run ${inputs.rerun.of} (${inputs.rerun.checks.length}) in ` : '';
    log('info', `▶ run ${what}suites: ${suites.join(', ')} on ${nodes.map((n) => n.name).join(', ')} (run ${run.runId})`);
    const progress = new ProgressReporter(process.stderr, inputs.rerun?.selects);
    const vitest = await createVitest(
      'test',
      {
        root: ROOT_DIR,
        config: false,
        include: ['suites/**/*.suite.{ts,js}'],
        watch: false,
        reporters: [reporter, progress, ['allure-vitest/reporter', { resultsDir: run.allureResults }]],
        setupFiles: ['allure-vitest/setup'],
        testTimeout,
        hookTimeout: testTimeout,
        // Worker threads in this process, not forked processes: the suites mostly wait on nodes, and a
        // forked worker cost ~110 MB of its own (a Node runtime each) against ~50 MB for a thread.
        pool: 'threads',
        // Bounded: suite files in `suites` workers, nodes within a suite `nodes` at a time.
        maxWorkers: cfg.concurrency.suites,
        maxConcurrency: cfg.concurrency.nodes,
        fileParallelism: true,
        passWithNoTests: true,
        retry: inputs.retries ?? 0,
      },
      {},
      {},
    );
    try {
      // Reporters' onInit (allure-vitest sets up its writer there); start() would do it, but it takes no per-file filters.
      await vitest.standalone();
      // One specification per suite file: a rerun narrows each file to its own checks by name.
      const project = vitest.getRootProject();
      const specs = present.map((s) => project.createSpecification(suiteFile(s), { testNamePattern: inputs.rerun?.patterns.get(s) }));
      try {
        await vitest.runTestSpecifications(specs, true);
      } catch (e) {
        // allure-vitest writes its results from this process: a full or read-only reports disk surfaces
        // here. The run still ends with a verdict (broken, naming the dir) before the reports are tried.
        const err = e as NodeJS.ErrnoException;
        if (!err.code) throw e;
        unhandledErrors.push({ name: 'InfrastructureError', message: `cannot write ${err.path ?? run.allureResults}: ${err.code}${err.code === 'ENOSPC' ? ' (no space left on device)' : ''}: ${err.message}` });
      }
      unhandledErrors.push(...(vitest.state.getUnhandledErrors() as { name?: string; message?: string }[]));
    } finally {
      await vitest.close();
    }
  } finally {
    rmSync(planFile, { force: true });
  }
  const summary = summarize(run.runId, cfg.cluster.name, startedAt, reporter.modules, suites, { unhandledErrors, missingSuites, rerun: inputs.rerun });
  if (inputs.rerun) log('info', `this run continues run ${inputs.rerun.of}: ${inputs.rerun.checks.length} failed or broken check(s) re-run`);
  // The verdict is printed before the reports are written, so a full disk does not hide it.
  process.stdout.write(`\n${table(summary)}\n`);
  for (const w of warningLines(summary)) process.stdout.write(`${w}\n`);
  // Before the reports are written (they list it) and sealed (it is redacted with them).
  if (summary.state === 'failed' || summary.state === 'broken') {
    summary.diagnostics = await step('collect diagnostics from the nodes', () => collectDiagnostics(run, cfg, nodes, summary, inputs.kubeconfig)).catch((e: Error) => {
      log('warn', `diagnostics: ${e.message}`);
      return undefined;
    });
    if (inputs.clusterLogs) {
      const where = await step("collect the cluster's own logs", () => inputs.clusterLogs!(run.dir)).catch((e: Error) => `none: ${e.message}`);
      if (where) log('info', `cluster logs: ${where}`);
    }
  }
  writingReports(run.dir, () => writeReports(run, summary));
  // allure-results hold the workers' raw error messages: redacted before the HTML is made from them.
  run.seal(redact);
  const html = await step('write HTML reports (Allure)', () => writeHtmlReports(run, summary.suites.map((s) => s.name)));
  run.seal(redact);
  run.markLatest();
  log('info', `reports: ${run.dir} (summary.md, summary.json, junit/, ${html.length ? 'html/index.html' : 'no HTML'})`);
  return summary;
}

/** One check as `run --list` shows it: declared by a suite file for a node (or "-"), or skipped with the reason. */
export interface ListedCheck {
  suite: string;
  node: string;
  name: string;
  skipped: boolean;
}

/**
 * The checks the suite files declare for `nodes` (vitest's collect mode: no check runs, no node is
 * opened). `nodes` may stand for whole pools: a suite declares the same checks on each of a pool's nodes.
 */
export async function listChecks(cfg: Config, nodes: NodeConfig[], suites: SuiteName[], capabilities: Capabilities, kubeconfig?: string): Promise<ListedCheck[]> {
  const plan: RunPlan = { runId: 'list', reportsDir: tmpdir(), config: cfg, nodes, image: { image: '-', pause: '-' }, expectedVersion: '', kubeconfig, capabilities };
  const planFile = join(tmpdir(), `gvisor-e2e-plan-list-${process.pid}.json`);
  writeFileSync(planFile, JSON.stringify(plan), { mode: 0o600 });
  process.env[PLAN_ENV] = planFile;
  try {
    const vitest = await createVitest('test', { root: ROOT_DIR, config: false, include: ['suites/**/*.suite.{ts,js}'], watch: false, reporters: [], pool: 'forks', passWithNoTests: true }, {}, {});
    try {
      const files = suites.map((s) => suiteFile(s)).filter((f) => existsSync(f));
      const result = await vitest.collect(files);
      const out: ListedCheck[] = [];
      for (const m of result.testModules) {
        const errors = m.errors();
        if (errors.length) out.push({ suite: suiteOf(m.moduleId), node: '-', name: `(cannot load: ${errors.map((e) => e.message).join('; ')})`, skipped: true });
        for (const t of m.children.allTests()) out.push({ suite: suiteOf(m.moduleId), node: t.parent.type === 'suite' ? t.parent.name : '-', name: t.name, skipped: t.options.mode === 'skip' || t.options.mode === 'todo' });
      }
      return out.sort((a, b) => suites.indexOf(a.suite as SuiteName) - suites.indexOf(b.suite as SuiteName));
    } finally {
      await vitest.close();
    }
  } finally {
    rmSync(planFile, { force: true });
  }
}
