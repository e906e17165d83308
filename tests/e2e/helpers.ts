import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import type { RunSummary } from '../../harness/report.ts';
import type { NodeConfig } from '../../harness/config.ts';
import { openNode } from '../../harness/node.ts';
import { expect } from 'vitest';
import { CLUSTER_MARKER, clusterNetwork } from '../../clusters/kube/controlplane.ts';

export const ROOT = resolve(import.meta.dirname, '../..');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the real CLI as a user would, in a child process. */
export function cli(args: string[], env: NodeJS.ProcessEnv = {}): CliResult {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'bin/gvisor-e2e.ts'), ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 600_000,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** A scratch dir for configs and reports, outside the paths test nodes remount (/var, /run). */
export function scratch(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `gvisor-e2e-${prefix}-`));
}

export function stateRoot(): string {
  return join(homedir(), '.local', 'state', 'gvisor-e2e-tests');
}

export function writeConfig(dir: string, name: string, cfg: object): string {
  const path = join(dir, name);
  writeFileSync(path, stringify(cfg));
  return path;
}

/** `gvisor-e2e run` of some suites against a running, installed cluster; its output and summary. */
export function runInstalled(cfgPath: string, reportsDir: string, suites: string[]): CliResult & { summary: RunSummary } {
  const r = cli(['--config', cfgPath, 'run', '--keep', '--no-install', '--suite', ...suites]);
  return { ...r, summary: latestSummary(reportsDir) };
}

export function latestSummary(reportsDir: string): RunSummary {
  return JSON.parse(readFileSync(join(reportsDir, 'latest', 'summary.json'), 'utf8')) as RunSummary;
}

/** The message of the first non-passing check matching suite/node/name. */
export function failures(s: RunSummary, suite: string): { node: string; name: string; state: string; message: string }[] {
  return s.checks.filter((c) => c.suite === suite && (c.state === 'failed' || c.state === 'broken')).map((c) => ({ node: c.node, name: c.name, state: c.state, message: c.message ?? '' }));
}

/** A local-provider config for a test cluster of its own (state under stateRoot(), reports in `reports`). */
export function localCluster<R extends object>(name: string, reports: string, cluster: { pools: object[]; kubernetes?: boolean }, rest: R) {
  return {
    apiVersion: 'gvisor-e2e.dev/v1alpha1',
    kind: 'Config',
    cluster: { provider: 'local', name, stateDir: join(stateRoot(), name), ...cluster },
    reportsDir: reports,
    ...rest,
  };
}

/** A `nodes`-provider config with one SSH node (for access and bad-input tests). */
export function sshNodeConfig(nodeName: string, access: object, reports: string) {
  return {
    apiVersion: 'gvisor-e2e.dev/v1alpha1',
    kind: 'Config',
    cluster: { provider: 'nodes', nodes: [{ name: nodeName, pool: 'gvisor', access: { type: 'ssh', ...access } }] },
    gvisor: { pools: ['gvisor'] },
    reportsDir: reports,
  };
}

/** Every suite a run selects by default, all passed: what a good cluster's summary shows. */
export const ALL_SUITES_PASSED = [
  ['runsc-installation', 'passed'],
  ['sandbox-dmesg', 'passed'],
  ['sandbox-basics', 'passed'],
  ['net-raw', 'passed'],
  ['limit-nofile', 'passed'],
  ['runtimeclass-scheduling', 'passed'],
];

/** Per suite: [name, state], to compare with ALL_SUITES_PASSED. */
export function suiteStates(s: RunSummary): string[][] {
  return s.suites.map((x) => [x.name, x.state]);
}

/** After `down` of the local cluster `name`: no state dir, no process with its marker, no network link of its bridge. */
export function expectLocalClusterGone(name: string): void {
  const S = join(stateRoot(), name);
  expect(existsSync(S)).toBe(false);
  const marked = readdirSync('/proc').filter((p) => {
    try {
      return readFileSync(`/proc/${p}/environ`, 'latin1').includes(`${CLUSTER_MARKER}=${S}\0`);
    } catch {
      return false;
    }
  });
  expect(marked).toEqual([]);
  expect(execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })).not.toContain(clusterNetwork(S).bridge);
}

/** What the harness may touch on a node (to compare before and after): files (type, mode, target, sha256) under its paths, and the images containerd holds. */
export async function nodeSnapshot(n: NodeConfig): Promise<string> {
  const node = openNode(n);
  try {
    const paths = ['/var/bin', '/usr/local/bin', '/etc/containerd', '/etc/systemd/system', '/var/lib/gvisor-e2e', '/run/gvisor-e2e-node.lock'];
    const r = await node.exec(
      [
        `for p in ${paths.join(' ')}; do [ -e "$p" ] || continue; find "$p" -xdev -printf '%y %m %p %l\\n'; find "$p" -xdev -type f -exec sha256sum {} +; done | sort`,
        `ctr --address ${n.paths.containerdSocket} -n k8s.io images ls -q | sort`,
      ].join('; '),
    );
    expect(r.code, r.stderr).toBe(0);
    return r.stdout;
  } finally {
    await node.close();
  }
}
