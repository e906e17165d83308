import { readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// The tests make scratch dirs (configs, reports, fake binaries, browser profiles) under the temp
// dir as gvisor-e2e-*; whatever this test run made there is removed when it ends, except a dir
// something is still mounted on (a failed test's tmpfs: left for the failure to be looked at).
export default function setup(): () => void {
  const started = Date.now() - 1000;
  return () => {
    const mounts = readFileSync('/proc/mounts', 'utf8');
    for (const e of readdirSync(tmpdir())) {
      if (!e.startsWith('gvisor-e2e-')) continue;
      const p = join(tmpdir(), e);
      try {
        if (statSync(p).ctimeMs < started || mounts.includes(` ${p}`)) continue;
        rmSync(p, { recursive: true, force: true });
      } catch {
        /* gone, or not ours to remove */
      }
    }
  };
}
