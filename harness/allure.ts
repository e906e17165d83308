import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { log } from './log.ts';
import { mustRunCommand } from './process.ts';
import { packageBin } from './paths.ts';
import type { RunDir } from './rundir.ts';

// Static HTML from allure-vitest's results with Allure 3 (JavaScript, no Java): one overall
// report and one per suite, each a single self-contained file that opens from disk.


interface AllureResult {
  labels?: { name: string; value: string }[];
  attachments?: { source: string }[];
  steps?: AllureResult[];
}

function attachmentSources(r: AllureResult): string[] {
  return [...(r.attachments ?? []).map((a) => a.source), ...(r.steps ?? []).flatMap(attachmentSources)];
}

async function generate(resultsDir: string, outDir: string, name: string): Promise<void> {
  const work = join(outDir, '..', `.allurerc-${Date.now()}-${Math.random().toString(16).slice(2)}`);
  mkdirSync(work, { recursive: true });
  const rc = join(work, 'allurerc.json');
  writeFileSync(rc, JSON.stringify({ name, output: outDir, plugins: { awesome: { options: { singleFile: true, reportName: name, groupBy: ['feature', 'subSuite'] } } } }));
  try {
    await mustRunCommand([packageBin('allure'), 'generate', resultsDir, '--config', rc, '--output', outDir, '--name', name], {
      cwd: work,
      // A small young generation: the generator then holds ~100 MB instead of ~135 MB beside the CLI.
      env: { ...process.env, NO_COLOR: '1', NODE_OPTIONS: [process.env.NODE_OPTIONS, '--max-semi-space-size=1'].filter(Boolean).join(' ') },
      timeoutMs: 600_000,
    });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Writes html/index.html (all suites) and html/<suite>/index.html of a run. Returns the paths. */
export async function writeHtmlReports(run: RunDir, suites: string[]): Promise<string[]> {
  const results = run.allureResults;
  const runId = run.runId;
  if (!existsSync(results)) return [];
  const html = run.html;
  const written: string[] = [];
  try {
    await generate(results, html, `gvisor-e2e ${runId}`);
    written.push(join(html, 'index.html'));
    const files = readdirSync(results).filter((f) => f.endsWith('-result.json'));
    for (const suite of suites) {
      const split = join(run.allureSplit, suite);
      mkdirSync(split, { recursive: true });
      for (const f of files) {
        const r = JSON.parse(readFileSync(join(results, f), 'utf8')) as AllureResult;
        if (!r.labels?.some((l) => l.name === 'feature' && l.value === suite)) continue;
        copyFileSync(join(results, f), join(split, f));
        for (const src of attachmentSources(r)) if (existsSync(join(results, src))) copyFileSync(join(results, src), join(split, src));
      }
      if (readdirSync(split).length === 0) continue;
      await generate(split, join(html, suite), `gvisor-e2e ${runId}: ${suite}`);
      written.push(join(html, suite, 'index.html'));
    }
  } catch (e) {
    // The verdict does not depend on HTML; say what went wrong and keep the other reports.
    log('warn', `HTML report generation failed: ${(e as Error).message.slice(-800)}`);
  } finally {
    rmSync(run.allureSplit, { recursive: true, force: true });
  }
  return written;
}
