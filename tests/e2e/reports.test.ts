import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../clusters/index.ts';
import { down } from '../../bin/app.ts';
import { cli, latestSummary, scratch, stateRoot, writeConfig } from './helpers.ts';

// What people and CI read after a failing run: summary, JUnit per suite, Allure HTML that opens
// from disk and shows the suites in a real browser — and no secret anywhere in any of it.

const dir = scratch('reports');
const reports = join(dir, 'reports');
const name = `r${process.pid}`;
const TOKEN = `planted-kubeconfig-token-${process.pid}-7f3a9c`;
const keyFile = join(dir, 'planted_key');
execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', keyFile]);
const KEY = readFileSync(keyFile, 'utf8');
const keyLines = KEY.split('\n').filter((l) => /^[A-Za-z0-9+/=]{16,}$/.test(l));
const kubeconfig = join(dir, 'kubeconfig');
writeFileSync(kubeconfig, `apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n    token: ${TOKEN}\n`);
const env = { KUBECONFIG: kubeconfig, SSH_PRIVATE_KEY: KEY };

const base = {
  apiVersion: 'gvisor-e2e.dev/v1alpha1',
  kind: 'Config',
  cluster: { provider: 'local', name, stateDir: join(stateRoot(), name), pools: [{ name: 'gvisor', kind: 'host' }] },
  // Planted on the node, where the suites read it back: config.toml is attached when a check fails.
  containerd: { additionalSettings: `# planted: ${TOKEN} ${keyLines[1]}\n` },
  reportsDir: reports,
};
const installed = writeConfig(dir, 'installed.yaml', { ...base, gvisor: { pools: ['gvisor'], configFlags: { 'net-raw': 'false' } } });
const expecting = writeConfig(dir, 'expecting.yaml', { ...base, gvisor: { pools: ['gvisor'], configFlags: { 'net-raw': 'true' } } });

function files(d: string): string[] {
  return readdirSync(d).flatMap((f) => (statSync(join(d, f)).isDirectory() ? files(join(d, f)) : [join(d, f)]));
}

function dumpDom(html: string): string {
  return execFileSync(
    'chromium',
    ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--user-data-dir=${scratch('chromium')}`, '--virtual-time-budget=15000', '--dump-dom', `file://${html}`],
    { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, stdio: ['ignore', 'pipe', 'ignore'], timeout: 120_000 },
  );
}

let runDir = '';
let result: ReturnType<typeof cli>;

beforeAll(() => {
  const i = cli(['--config', installed, 'install'], env);
  expect(i.code, i.stderr.slice(-2000)).toBe(0);
  // The node has net-raw off; the config expects it on: net-raw and runsc-installation fail.
  result = cli(['--config', expecting, 'run', '--keep', '--no-install', '--suite', 'runsc-installation', 'net-raw', 'sandbox-dmesg'], env);
  runDir = join(reports, latestSummary(reports).runId);
});

afterAll(async () => {
  await down(parseConfig(readFileSync(installed, 'utf8'), installed));
});

describe('a failing run', () => {
  it('exits 1 and says what was expected, what was found and where', () => {
    expect(result.code, result.stderr.slice(-2000)).toBe(1);
    const s = latestSummary(reports);
    expect(s.suites.map((x) => [x.name, x.state])).toEqual([
      ['runsc-installation', 'failed'],
      ['sandbox-dmesg', 'passed'],
      ['net-raw', 'failed'],
    ]);
    expect(s.suites[2]!.firstFailure).toMatch(/^\[gvisor-1\] raw sockets work in the sandbox \(net-raw "true"\): net-raw is configured "true" but ping in the sandbox on gvisor-1 failed/);
    expect(readFileSync(join(runDir, 'summary.md'), 'utf8')).toMatch(/\| net-raw \| FAIL \| 0 \| 1 \| 0 \| 0 \|/);
    expect(result.stdout).toMatch(/net-raw\s+│ FAIL/);
  });

  it('writes JUnit per suite with node classnames and <failure> for failed checks', () => {
    const x = readFileSync(join(runDir, 'junit', 'net-raw.xml'), 'utf8');
    expect(x).toContain('<testsuite name="net-raw" tests="1" failures="1" errors="0" skipped="0"');
    expect(x).toMatch(/<testcase classname="gvisor-e2e\.net-raw\.gvisor-1" name="raw sockets work in the sandbox \(net-raw &quot;true&quot;\)" time="[\d.]+"><failure type="failed"/);
    expect(readFileSync(join(runDir, 'junit', 'sandbox-dmesg.xml'), 'utf8')).not.toContain('<failure');
  });

  it('keeps evidence: the node files and commands are attached to the failed check', () => {
    const attachments = files(join(runDir, 'allure-results')).filter((f) => f.includes('-attachment'));
    const texts = attachments.map((f) => readFileSync(f, 'utf8'));
    expect(texts.some((t) => t.includes('[runsc_config]') && t.includes('net-raw = "false"'))).toBe(true);
    expect(texts.some((t) => t.includes('Starting gVisor...'))).toBe(true);
    // The planted line came back from the node — redacted.
    expect(texts.some((t) => t.includes('# planted: [REDACTED] [REDACTED]'))).toBe(true);
  });

  it('leaves no secret in any report file', () => {
    const all = files(runDir);
    expect(all.length).toBeGreaterThan(20);
    for (const f of all) {
      const text = readFileSync(f, 'latin1');
      expect(text.includes(TOKEN), `${f} contains the kubeconfig token`).toBe(false);
      for (const l of keyLines) expect(text.includes(l), `${f} contains a line of the SSH key`).toBe(false);
    }
  });

  it('the HTML reports open from disk in Chromium and show the suites and results', () => {
    const overall = join(runDir, 'html', 'index.html');
    expect(existsSync(overall)).toBe(true);
    const dom = dumpDom(overall);
    for (const suite of ['runsc-installation', 'net-raw', 'sandbox-dmesg']) expect(dom).toContain(suite);
    expect(dom).toMatch(/Failed/);
    const perSuite = dumpDom(join(runDir, 'html', 'net-raw', 'index.html'));
    expect(perSuite).toContain('net-raw');
    expect(perSuite).not.toContain('sandbox-dmesg');
  });
});
