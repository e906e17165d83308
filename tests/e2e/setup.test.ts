// What `.ci/setup` does to the machine it prepares: it installs packages with no service starting,
// leaves no policy-rc.d of its own behind on any exit path, never touches someone else's, and
// signals no process (a running containerd — Docker's, a kubelet's — stays up).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { processStartTime } from '../../harness/state.ts';
import { until } from '../../harness/wait.ts';
import { ROOT, scratch } from './helpers.ts';
import { writePrivateContainerdConfig } from './dockerd.ts';

/** The state letter of /proc/<pid>/stat (R, S, D, Z, …). */
function processState(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
}

const POLICY = '/usr/sbin/policy-rc.d';
const APT_INSTALL = join(ROOT, '.ci', 'apt-install');
const NO_SUCH_PACKAGE = 'gvisor-e2e-no-such-package';

/**
 * Runs `script` in a mount namespace of its own whose /usr/sbin is an overlay of the host's, so a
 * policy-rc.d can be made, removed or left there without touching the host's. `prepare` runs
 * first inside it (e.g. removing the host's policy-rc.d from the view). Prints what it finds.
 */
function inPrivateSbin(prepare: string, script: string): { out: string; err: string } {
  const d = scratch('sbin-overlay');
  mkdirSync(join(d, 'upper'));
  mkdirSync(join(d, 'work'));
  const r = spawnSync(
    'unshare',
    ['--mount', '--propagation', 'private', 'bash', '-c', `set -e; mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir=${d}/upper,workdir=${d}/work /usr/sbin; ${prepare}; set +e; ${script}`],
    { cwd: ROOT, encoding: 'utf8', timeout: 300_000 },
  );
  return { out: r.stdout, err: r.stderr };
}

const report = 'if [ -e /usr/sbin/policy-rc.d ]; then echo "policy: $(tr "\\n" " " </usr/sbin/policy-rc.d)"; else echo "policy: none"; fi';

describe('.ci/apt-install and policy-rc.d', () => {
  const hostPolicy = existsSync(POLICY) ? { text: readFileSync(POLICY, 'utf8'), mtime: statSync(POLICY).mtimeMs } : undefined;
  const hostPolicyUnchanged = () => expect(existsSync(POLICY) ? { text: readFileSync(POLICY, 'utf8'), mtime: statSync(POLICY).mtimeMs } : undefined).toEqual(hostPolicy);

  it('apt-get install fails: the policy-rc.d it made is gone afterwards', () => {
    const r = inPrivateSbin('rm -f /usr/sbin/policy-rc.d', `bash ${APT_INSTALL} ${NO_SUCH_PACKAGE}; echo "rc=$?"; ${report}`);
    expect(r.out, r.err).toMatch(/rc=(?!0\n)\d+\n/);
    expect(r.err).toContain(`Unable to locate package ${NO_SUCH_PACKAGE}`);
    expect(r.out).toContain('policy: none');
    hostPolicyUnchanged();
  });

  it('SIGTERM while it installs: exit 143, and the policy-rc.d it made is gone', () => {
    // The policy appears before apt-get runs; the signal is sent the moment it is seen.
    const r = inPrivateSbin(
      'rm -f /usr/sbin/policy-rc.d',
      `bash ${APT_INSTALL} ${NO_SUCH_PACKAGE} & p=$!; until [ -e /usr/sbin/policy-rc.d ] || ! kill -0 $p 2>/dev/null; do sleep 0.02; done; kill -TERM $p; wait $p; echo "rc=$?"; ${report}`,
    );
    expect(r.out, r.err).toContain('rc=143\n');
    expect(r.out).toContain('policy: none');
    hostPolicyUnchanged();
  });

  it("someone else's policy-rc.d is left exactly as it was", () => {
    const theirs = '#!/bin/sh\n# the admin own policy\nexit 0\n';
    const file = join(scratch('their-policy'), 'policy-rc.d');
    writeFileSync(file, theirs, { mode: 0o755 });
    const r = inPrivateSbin(`cp ${file} /usr/sbin/policy-rc.d`, `bash ${APT_INSTALL} ${NO_SUCH_PACKAGE}; echo "rc=$?"; ${report}`);
    expect(r.out, r.err).toMatch(/rc=(?!0\n)\d+\n/);
    expect(r.out).toContain(`policy: ${theirs.replace(/\n/g, ' ')}`);
    hostPolicyUnchanged();
  });
});

describe('.ci/apt-install and processes already running', () => {
  it('a containerd running on the machine (not the harness\'s) stays up', async () => {
    const d = scratch('host-containerd');
    writePrivateContainerdConfig(join(d, 'config.toml'), { root: `${d}/root`, state: `${d}/state`, address: `${d}/containerd.sock` });
    const containerd = spawn('/usr/bin/containerd', ['--config', join(d, 'config.toml')], { stdio: 'ignore' });
    try {
      await until(`containerd (pid ${containerd.pid}) to serve ${d}/containerd.sock`, 30_000, () => existsSync(join(d, 'containerd.sock')));
      const start = processStartTime(containerd.pid!);
      expect(readFileSync(`/proc/${containerd.pid}/comm`, 'utf8').trim()).toBe('containerd');
      // Installed already, so apt-get does not run: only what the script does besides is seen.
      const r = spawnSync('bash', [APT_INSTALL, 'containerd'], { cwd: ROOT, encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      // Still the same process, and running: a killed child stays a zombie until this process reaps it.
      expect(processStartTime(containerd.pid!)).toBe(start);
      expect(processState(containerd.pid!)).not.toMatch(/^[ZX]$/);
    } finally {
      containerd.kill('SIGKILL');
    }
  });
});
