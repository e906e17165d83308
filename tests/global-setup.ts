import { mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// The tests make scratch dirs (configs, reports, fake binaries, browser profiles) under the temp
// dir. Each test run gets a temp dir of its own (TMPDIR, inherited by the workers and the CLI
// processes they start), and only that is removed when the run ends: another process's files in
// /tmp (a build running beside the tests) are never touched. A dir something is still mounted on
// (a failed test's tmpfs) is left for the failure to be looked at.
export default function setup(): () => void {
  const own = mkdtempSync(join(tmpdir(), 'gvisor-e2e-testrun-'));
  process.env.TMPDIR = own;
  return () => {
    const mounts = readFileSync('/proc/mounts', 'utf8');
    for (const e of readdirSync(own)) {
      const p = join(own, e);
      if (mounts.includes(` ${p}`)) continue;
      rmSync(p, { recursive: true, force: true });
    }
    try {
      rmdirSync(own);
    } catch {
      /* a mounted dir is left inside */
    }
  };
}
