import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLUSTER_MARKER } from '../../clusters/kube/controlplane.ts';
import { NODE_MARKER } from '../../clusters/local/host-node.ts';
import { ROOT, cli, scratch, stateRoot, writeConfig } from './helpers.ts';

// Whatever stops a run — SIGINT or SIGTERM while it works, or a crash that `down` must finish —
// nothing the harness made is left: no node process, no state directory.

function config(name: string): string {
  return writeConfig(scratch(`cleanup-${name}`), 'c.yaml', {
    apiVersion: 'gvisor-e2e.dev/v1alpha1',
    kind: 'Config',
    cluster: { provider: 'local', name, stateDir: join(stateRoot(), name), pools: [{ name: 'gvisor', kind: 'host' }] },
    gvisor: { pools: ['gvisor'] },
    reportsDir: join(scratch(`cleanup-${name}-reports`)),
  });
}

/** Processes of the cluster: node processes (marker = node state dir) and control-plane ones (marker = cluster state dir). */
function leftovers(name: string): number[] {
  const S = join(stateRoot(), name);
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        const env = readFileSync(`/proc/${p}/environ`, 'latin1');
        return env.includes(`${NODE_MARKER}=${S}/`) || env.includes(`${CLUSTER_MARKER}=${S}\0`);
      } catch {
        return false;
      }
    })
    .map(Number);
}

async function interruptWhen(name: string, signal: NodeJS.Signals, ready: (stderr: string) => boolean): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'bin/gvisor-e2e.ts'), '--config', config(name), 'run'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let sent = false;
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (!sent && ready(stderr)) {
      sent = true;
      child.kill(signal);
    }
  });
  child.stdout.resume();
  const code = await new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
  return { code, stderr };
}

describe('cleanup', () => {
  it('a full disk in the state directory: `up` is broken (exit 2) naming the directory and ENOSPC, and nothing is left', () => {
    const name = `full${process.pid}`;
    const mnt = scratch('full-state');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt]);
    try {
      spawnSync('dd', ['if=/dev/zero', `of=${join(mnt, 'filler')}`, 'bs=64k']); // until ENOSPC
      const S = join(mnt, name);
      const cfg = writeConfig(scratch('full-state-cfg'), 'c.yaml', {
        apiVersion: 'gvisor-e2e.dev/v1alpha1',
        kind: 'Config',
        cluster: { provider: 'local', name, stateDir: S, pools: [{ name: 'gvisor', kind: 'host' }] },
        gvisor: { pools: ['gvisor'] },
        reportsDir: scratch('full-state-reports'),
      });
      const r = cli(['--config', cfg, 'up']);
      expect(r.code, r.stderr.slice(-2000)).toBe(2);
      expect(r.stderr).toContain(`no space left in the state directory ${S} (ENOSPC)`);
      expect(existsSync(S)).toBe(false);
      const marked = readdirSync('/proc').filter((p) => {
        try {
          return readFileSync(`/proc/${p}/environ`, 'latin1').includes(`=${S}`);
        } catch {
          return false;
        }
      });
      expect(marked).toEqual([]);
    } finally {
      execFileSync('umount', [mnt]);
    }
    expect(readFileSync('/proc/mounts', 'utf8')).not.toContain(mnt);
  });

  it('a failed `up` (a kubelet that will not start) removes every node and the control plane it made', async () => {
    const { buildKubernetes } = await import('../../clusters/kube/build.ts');
    const real = await buildKubernetes();
    const bin = scratch('fake-kubelet');
    for (const b of ['kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'kubectl']) symlinkSync(join(real.dir, b), join(bin, b));
    symlinkSync(real.etcd, join(bin, 'etcd'));
    writeFileSync(join(bin, 'kubelet'), '#!/bin/sh\necho "kubelet refuses to start (test)" >&2\nexit 1\n', { mode: 0o755 });
    const name = `cu${process.pid}`;
    const p = writeConfig(scratch(`cleanup-${name}`), 'c.yaml', {
      apiVersion: 'gvisor-e2e.dev/v1alpha1',
      kind: 'Config',
      cluster: { provider: 'local', name, stateDir: join(stateRoot(), name), kubernetes: true, kubernetesBinDir: bin, pools: [{ name: 'gvisor', kind: 'host' }] },
      gvisor: { pools: ['gvisor'] },
    });
    const r = cli(['--config', p, 'up']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('kubelet on gvisor-1 exited: kubelet refuses to start (test)');
    expect(existsSync(join(stateRoot(), name))).toBe(false);
    expect(leftovers(name)).toEqual([]);
  });

  it('SIGINT while installing: exit 130, the cluster is removed', async () => {
    const name = `ci${process.pid}`;
    const r = await interruptWhen(name, 'SIGINT', (s) => s.includes('▶ install on gvisor-1'));
    expect(r.code, r.stderr.slice(-1500)).toBe(130);
    expect(r.stderr).toContain('SIGINT: stopping and cleaning up');
    expect(existsSync(join(stateRoot(), name))).toBe(false);
    expect(leftovers(name)).toEqual([]);
  });

  it('SIGTERM while suites run: exit 143, the cluster is removed', async () => {
    const name = `ct${process.pid}`;
    const r = await interruptWhen(name, 'SIGTERM', (s) => s.includes('▶ run suites'));
    expect(r.code, r.stderr.slice(-1500)).toBe(143);
    expect(existsSync(join(stateRoot(), name))).toBe(false);
    expect(leftovers(name)).toEqual([]);
  });

  it('after a crash (SIGKILL), `down` from another process removes everything', async () => {
    const name = `ck${process.pid}`;
    const r = await interruptWhen(name, 'SIGKILL', (s) => s.includes('▶ install on gvisor-1'));
    expect(r.code).toBe(null);
    expect(existsSync(join(stateRoot(), name, 'state.json'))).toBe(true);
    expect(leftovers(name).length).toBeGreaterThan(0); // the crash left the node running
    const d = cli(['--config', config(name), 'down']);
    expect(d.code, d.stderr).toBe(0);
    expect(existsSync(join(stateRoot(), name))).toBe(false);
    expect(leftovers(name)).toEqual([]);
    // A second `down` finds nothing to do and still succeeds.
    expect(cli(['--config', config(name), 'down']).code).toBe(0);
  });
});
