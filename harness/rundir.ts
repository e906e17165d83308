// The one place that knows the layout of <reportsDir>: a directory per run, `latest` pointing at
// the newest, and beside them the logs a provider collected when a cluster failed to come up.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { InfrastructureError } from './errors.ts';

/** A run id sorts by time: yyyymmdd-hhmmss-<4 hex>. */
export function newRunId(d = new Date()): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}-${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}-${randomBytes(2).toString('hex')}`;
}

/** <reportsDir>/<runId>/ and what goes in it. */
export class RunDir {
  readonly dir: string;
  constructor(
    readonly reportsDir: string,
    readonly runId: string,
  ) {
    this.dir = join(reportsDir, runId);
  }

  get summaryJson(): string {
    return join(this.dir, 'summary.json');
  }
  get summaryMd(): string {
    return join(this.dir, 'summary.md');
  }
  get junitXml(): string {
    return join(this.dir, 'junit.xml');
  }
  /** One JUnit file per suite. */
  junitOf(suite: string): string {
    return join(this.dir, 'junit', `${suite}.xml`);
  }
  get allureResults(): string {
    return join(this.dir, 'allure-results');
  }
  /** html/index.html for the run, html/<suite>/index.html per suite. */
  get html(): string {
    return join(this.dir, 'html');
  }
  /** Scratch for splitting Allure results per suite (removed after). */
  get allureSplit(): string {
    return join(this.dir, '.allure-split');
  }
  /** What was collected from a node after a failed or broken run (harness/diagnostics.ts). */
  diagnosticsOf(node: string): string {
    return join(this.dir, 'diagnostics', node);
  }
  /** Every command a suite ran on the nodes (redacted). */
  transcriptOf(suite: string): string {
    return join(this.dir, 'transcripts', `${suite}.json`);
  }

  /** Reports may quote a node's files and errors: only the user who ran the harness reads them (0700). */
  create(): void {
    writingReports(this.dir, () => {
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      chmodSync(this.dir, 0o700);
    });
  }

  /**
   * Every file of the run through `redact`, then files 0600 and directories 0700: what the test
   * workers and Allure wrote (error messages and traces included) passed no other redaction.
   */
  seal(redact: (text: string) => string): void {
    const walk = (dir: string): void => {
      // Allure's HTML is made from the redacted results; its minified script is not text to rewrite.
      const rewrite = dir !== this.html && !dir.startsWith(`${this.html}/`);
      chmodSync(dir, 0o700);
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const p = join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.isFile()) {
          const raw = readFileSync(p);
          // Text only (JSON, XML, Markdown, HTML, logs); binary attachments stay as they are.
          if (rewrite && !raw.subarray(0, 8000).includes(0)) {
            const text = raw.toString('utf8');
            const clean = redact(text);
            if (clean !== text) writeFileSync(p, clean);
          }
          chmodSync(p, 0o600);
        }
      }
    };
    writingReports(this.dir, () => walk(this.dir));
  }

  /** Points <reportsDir>/latest at this run. */
  markLatest(): void {
    const latest = join(this.reportsDir, 'latest');
    try {
      if (existsSync(latest) || isSymlink(latest)) unlinkSync(latest);
      symlinkSync(this.runId, latest);
    } catch {
      /* a reports dir on a filesystem without symlinks */
    }
  }
}

/** Where a provider puts the logs of a cluster that failed (e.g. `kind export logs`): <reportsDir>/<provider>-logs/<cluster>-<stamp>. */
export function clusterLogsDir(reportsDir: string, provider: string, cluster: string, d = new Date()): string {
  const stamp = d.toISOString().replace(/[-:]/g, '').replace(/\..*/, '');
  return join(reportsDir, `${provider}-logs`, `${cluster}-${stamp}`);
}

/**
 * A report that cannot be written (full disk, read-only or missing directory) breaks the run: the
 * error names the path and the errno, not just "ENOSPC: no space left on device, write".
 */
export function writingReports<T>(where: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (!err.code) throw e;
    throw new InfrastructureError(`cannot write the reports to ${err.path ?? where}: ${err.code}${err.code === 'ENOSPC' ? ' (no space left on device)' : ''}: ${err.message}`, { cause: e });
  }
}

function isSymlink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}
