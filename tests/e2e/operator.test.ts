// The operator's features through the real CLI on one local cluster: run --list and
// install --dry-run touch no node (byte for byte), a failing run reports progress, diagnostics
// (containerd's config, no secret) and a summary.json valid against the shipped JSON Schema;
// `report` prints it again; after the node is fixed, --rerun-failed re-runs and passes only those checks.
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { down, up } from '../../bin/app.ts';
import { parseConfig } from '../../clusters/index.ts';
import type { NodeConfig } from '../../harness/config.ts';
import type { RunSummary } from '../../harness/report.ts';
import { ROOT, cli, latestSummary, localCluster, nodeSnapshot, scratch, writeConfig } from './helpers.ts';

const dir = scratch('operator');
const reports = join(dir, 'reports');
const name = `op${process.pid}`;
const TOKEN = `planted-operator-token-${process.pid}-51c0de`;
const kubeconfig = join(dir, 'kubeconfig');
writeFileSync(kubeconfig, `apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n    token: ${TOKEN}\n`);
const env = { KUBECONFIG: kubeconfig, GVISOR_E2E_HEARTBEAT_MS: '2000' };
const cluster = (netRaw: string) =>
  localCluster(name, reports, { pools: [{ name: 'gvisor', kind: 'host' }] }, {
    gvisor: { pools: ['gvisor'], configFlags: { 'net-raw': netRaw } },
    // Comes back from the node in containerd's config, which the diagnostics keep: it must be redacted there.
    containerd: { additionalSettings: `# planted: ${TOKEN}\n` },
  });
const installed = writeConfig(dir, 'installed.yaml', cluster('false'));
const expecting = writeConfig(dir, 'expecting.yaml', cluster('true'));
const SUITES = ['runsc-installation', 'net-raw', 'sandbox-dmesg'];
let nodes: NodeConfig[] = [];

const snapshots = () => Promise.all(nodes.map(nodeSnapshot));

function files(d: string): string[] {
  return readdirSync(d).flatMap((f) => (statSync(join(d, f)).isDirectory() ? files(join(d, f)) : [join(d, f)]));
}

beforeAll(async () => {
  const i = cli(['--config', installed, 'install'], env);
  expect(i.code, i.stderr.slice(-2000)).toBe(0);
  nodes = await up(parseConfig(readFileSync(installed, 'utf8'), installed));
}, 900_000);

afterAll(async () => {
  await down(parseConfig(readFileSync(installed, 'utf8'), installed));
}, 300_000);

describe('touching no node', () => {
  it('install --dry-run prints the diff per node and leaves every node byte for byte', async () => {
    const before = await snapshots();
    const r = cli(['--config', expecting, 'install', '--dry-run'], env);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expect(r.stdout).toContain('## gvisor-1 (pool gvisor, gVisor): 1 file(s) would change');
    expect(r.stdout).toMatch(/^--- \/etc\/containerd\/runsc\.toml\n\+\+\+ \/etc\/containerd\/runsc\.toml \(mode 0644\)\n/m);
    expect(r.stdout).toMatch(/^-  net-raw = "false"$/m);
    expect(r.stdout).toMatch(/^\+  net-raw = "true"$/m);
    expect(await snapshots()).toEqual(before);
    // Up to date: nothing to show.
    const same = cli(['--config', installed, 'install', '--dry-run'], env);
    expect(same.code, same.stderr.slice(-2000)).toBe(0);
    expect(same.stdout).toContain('## gvisor-1 (pool gvisor, gVisor): up to date, nothing would change');
    expect(await snapshots()).toEqual(before);
  });

  it('run --list names the suites and checks, and why a suite would be skipped', async () => {
    const before = await snapshots();
    const r = cli(['--config', expecting, 'run', '--list', '--skip', 'limit-nofile'], env);
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expect(r.stdout).toMatch(/^ {2}run {3}net-raw +selected$/m);
    expect(r.stdout).toMatch(/^ {2}skip {2}limit-nofile +skipped by --skip$/m);
    expect(r.stdout).toMatch(/^ {2}skip {2}runtimeclass-scheduling +needs a Kubernetes API/m);
    expect(r.stdout).toContain('[<each node of pool gvisor>] raw sockets work in the sandbox (net-raw "true")');
    expect(r.stderr).not.toContain('▶');
    expect(await snapshots()).toEqual(before);
  });
});

describe('a failing run, then the node fixed and only the failed checks re-run', () => {
  let first: RunSummary;
  let firstRun: ReturnType<typeof cli>;
  beforeAll(() => {
    // The node has net-raw off, the config expects it on: net-raw and a runsc-installation check fail.
    firstRun = cli(['--config', expecting, 'run', '--keep', '--no-install', '--suite', ...SUITES], env);
    first = latestSummary(reports);
  }, 900_000);

  it('exits 1, and its summary.json is valid against the shipped JSON Schema', () => {
    expect(firstRun.code, firstRun.stderr.slice(-3000)).toBe(1);
    const schema = z.fromJSONSchema(JSON.parse(readFileSync(join(ROOT, 'reports', 'summary.schema.json'), 'utf8')));
    const raw = JSON.parse(readFileSync(join(reports, first.runId, 'summary.json'), 'utf8'));
    expect(schema.safeParse(raw).error).toBeUndefined();
    expect(raw).toMatchObject({ schemaVersion: 1, exitCode: 1, state: 'failed' });
    // The schema is no rubber stamp: the same file with a state it does not know is refused.
    expect(schema.safeParse({ ...raw, state: 'flaky' }).success).toBe(false);
  });

  it('shows progress in a CI log: a line per check as it ends, and a heartbeat for long steps', () => {
    expect(firstRun.stderr).toMatch(/^\d\d:\d\d:\d\d FAIL {3}net-raw \[gvisor-1\] raw sockets work in the sandbox \(net-raw "true"\) \(\d+\.\ds\) — net-raw is configured "true"/m);
    expect(firstRun.stderr).toMatch(/^\d\d:\d\d:\d\d PASS {3}sandbox-dmesg \[gvisor-1\] /m);
    expect(firstRun.stderr).toMatch(/still running/);
    // No terminal control codes in a log.
    expect(firstRun.stderr).not.toContain('\x1b[K');
  });

  it('keeps diagnostics per node: containerd config, logs, CRI status; no secret; attached in Allure', () => {
    const d = join(reports, first.runId, 'diagnostics', 'gvisor-1');
    expect(first.diagnostics).toEqual(['diagnostics/gvisor-1']);
    const config = readFileSync(join(d, 'containerd-config.toml'), 'utf8');
    // containerd's effective config: the handler install declared, and defaults the file does not spell out.
    expect(config).toMatch(/runtimes\.runsc\]/);
    expect(config).toMatch(/^root = /m);
    // The file as written keeps the planted line (config dump drops comments): redacted.
    expect(readFileSync(join(d, 'config.toml'), 'utf8')).toContain('# planted: [REDACTED]');
    // The file this node's containerd writes to (the local provider's nodes have no systemd), with containerd's own lines.
    expect(readFileSync(join(d, 'containerd.log'), 'utf8')).toMatch(/^# \/.*containerd\.log \(pid \d+\)\n(.*\n)*.*level=info/m);
    expect(JSON.parse(readFileSync(join(d, 'cri-status.json'), 'utf8')).runtimeHandlers).toHaveProperty('runsc');
    expect(readFileSync(join(d, 'runsc-debug.log'), 'utf8')).toContain('debug is off');
    for (const f of files(join(reports, first.runId))) expect(readFileSync(f, 'latin1').includes(TOKEN), `${f} holds the token`).toBe(false);
    const results = files(join(reports, first.runId, 'allure-results')).filter((f) => f.endsWith('-result.json')).map((f) => readFileSync(f, 'utf8'));
    expect(results.some((t) => t.includes('"diagnostics gvisor-1: containerd-config.toml"'))).toBe(true);
  });

  it('report prints the verdict table and the first failures again, with the exit code of the run', () => {
    const r = cli(['--config', expecting, 'report', first.runId], env);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stdout).toContain(`run ${first.runId} of cluster "${name}"`);
    expect(r.stdout).toMatch(/net-raw\s+│ FAIL/);
    expect(r.stdout).toMatch(/^ {2}FAILED net-raw \[gvisor-1\] raw sockets work in the sandbox \(net-raw "true"\): net-raw is configured "true"/m);
    const bad = cli(['--config', expecting, 'report', 'no-such-run'], env);
    expect(bad.code).toBe(64);
    expect(bad.stderr).toContain('no summary.json at no-such-run');
  });

  it('after the node is fixed, --rerun-failed runs only the failed checks, on the same node, and they pass', () => {
    const failed = first.checks.filter((c) => c.state === 'failed' || c.state === 'broken').map((c) => `${c.suite} [${c.node}] ${c.name}`);
    expect(failed.length).toBeGreaterThanOrEqual(2);
    expect(first.checks.length).toBeGreaterThan(failed.length + 3);
    const fix = cli(['--config', expecting, 'install'], env);
    expect(fix.code, fix.stderr.slice(-2000)).toBe(0);
    const listed = cli(['--config', expecting, 'run', '--list', '--rerun-failed', first.runId], env);
    expect(listed.code, listed.stderr.slice(-2000)).toBe(0);
    expect(listed.stdout).toMatch(/^ {2}skip {2}sandbox-dmesg +all its checks passed or were skipped in run /m);
    const r = cli(['--config', expecting, 'run', '--keep', '--no-install', '--rerun-failed', first.runId], env);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    const again = latestSummary(reports);
    expect(again.runId).not.toBe(first.runId);
    expect(again.continues).toEqual({ runId: first.runId, checks: failed.length });
    expect(again.checks.map((c) => `${c.suite} [${c.node}] ${c.name}`).sort()).toEqual([...failed].sort());
    expect(again.checks.every((c) => c.state === 'passed')).toBe(true);
    expect(readFileSync(join(reports, again.runId, 'summary.json'), 'utf8')).toContain(`"continues"`);
    const rep = cli(['--config', expecting, 'report'], env);
    expect(rep.code).toBe(0);
    expect(rep.stdout).toContain(`continues run ${first.runId}`);
    // Nothing left to re-run from a passing run: a usage error, not a silent pass.
    const none = cli(['--config', expecting, 'run', '--keep', '--no-install', '--rerun-failed'], env);
    expect(none.code).toBe(64);
    expect(none.stderr).toContain(`run ${again.runId}`);
    expect(none.stderr).toContain('has no failed or broken check to re-run');
  });
});

it('the secrets stay out of every report file', () => {
  expect(existsSync(reports)).toBe(true);
  for (const f of files(reports)) expect(readFileSync(f, 'latin1').includes(TOKEN), f).toBe(false);
});
