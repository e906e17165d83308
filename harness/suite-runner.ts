// Runs the selected suite files with vitest against nodes that are up and installed, then writes
// the verdict table, summary, JUnit and Allure HTML into the run's directory.
import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startVitest } from 'vitest/node';
import type { Capabilities } from './capabilities.ts';
import { type Config, type NodeConfig, type SuiteName, durationMs } from './config.ts';
import { log, step } from './log.ts';
import { SummaryReporter, summarize, table, warningLines, writeReports, type RunSummary } from './report.ts';
import { newRunId, RunDir, writingReports } from './rundir.ts';
import { PLAN_ENV, type RunPlan } from './suite.ts';
import { ROOT_DIR } from './paths.ts';
import { writeHtmlReports } from './allure.ts';
import { redact } from './redact.ts';

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
  const fileOf = (s: string) => join(ROOT_DIR, 'suites', s, `${s}.suite.ts`);
  // A selected suite without its file is reported broken, never silently left out.
  const missingSuites = suites.filter((s) => !existsSync(fileOf(s)));
  let unhandledErrors: { name?: string; message?: string }[] = [];
  try {
    const files = suites.map(fileOf).filter((f) => existsSync(f));
    log('info', `▶ run suites: ${suites.join(', ')} on ${nodes.map((n) => n.name).join(', ')} (run ${run.runId})`);
    const vitest = await startVitest(
      'test',
      files,
      {
        root: ROOT_DIR,
        config: false,
        include: ['suites/**/*.suite.ts'],
        watch: false,
        reporters: [reporter, 'default', ['allure-vitest/reporter', { resultsDir: run.allureResults }]],
        setupFiles: ['allure-vitest/setup'],
        testTimeout,
        hookTimeout: testTimeout,
        pool: 'forks',
        // Bounded: suite files in `suites` workers, nodes within a suite `nodes` at a time.
        maxWorkers: cfg.concurrency.suites,
        maxConcurrency: cfg.concurrency.nodes,
        fileParallelism: true,
        passWithNoTests: true,
        retry: inputs.retries ?? 0,
      },
      { logLevel: 'error' },
    );
    unhandledErrors = vitest.state.getUnhandledErrors() as { name?: string; message?: string }[];
    await vitest.close();
  } finally {
    rmSync(planFile, { force: true });
  }
  const summary = summarize(run.runId, cfg.cluster.name, startedAt, reporter.modules, suites, { unhandledErrors, missingSuites });
  // The verdict is printed before the reports are written, so a full disk does not hide it.
  process.stdout.write(`\n${table(summary)}\n`);
  for (const w of warningLines(summary)) process.stdout.write(`${w}\n`);
  writingReports(run.dir, () => writeReports(run, summary));
  // allure-results hold the workers' raw error messages: redacted before the HTML is made from them.
  run.seal(redact);
  const html = await step('write HTML reports (Allure)', () => writeHtmlReports(run, summary.suites.map((s) => s.name)));
  run.seal(redact);
  run.markLatest();
  log('info', `reports: ${run.dir} (summary.md, summary.json, junit/, ${html.length ? 'html/index.html' : 'no HTML'})`);
  return summary;
}
