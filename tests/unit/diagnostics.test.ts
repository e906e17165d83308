// The node-side commands of the diagnostics, run in a real shell, and which nodes a failure names.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { daemonLogCommand, effectiveConfigCommand, nodesToDiagnose, runscDebugCommand } from '../../harness/diagnostics.ts';
import { nodeConfig } from '../../harness/config.ts';
import type { RunSummary } from '../../harness/report.ts';

const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { encoding: 'utf8' });

describe('runsc debug logs', () => {
  const dir = mkdtempSync(join(tmpdir(), 'gvisor-e2e-diag-'));
  const logs = join(dir, 'runsc');
  mkdirSync(join(logs, 'sandbox-1'), { recursive: true });
  for (let i = 0; i < 7; i++) {
    const f = join(logs, 'sandbox-1', `runsc.log.${i}.boot`);
    writeFileSync(f, `line of ${i}\n`);
    utimesSync(f, 1_700_000_000 + i, 1_700_000_000 + i);
  }
  it('debug-log in runsc.toml (with a %ID% pattern): the five newest files, newest first', () => {
    const toml = join(dir, 'runsc.toml');
    writeFileSync(toml, `[runsc_config]\n  net-raw = "false"\n  debug-log = "${logs}/%ID%/"\n`);
    const out = sh(runscDebugCommand(toml, undefined));
    expect(out.match(/^===== .*$/gm)).toEqual([6, 5, 4, 3, 2].map((i) => `===== ${logs}/sandbox-1/runsc.log.${i}.boot`));
    expect(out).toContain('line of 6');
    expect(out).not.toContain('line of 1');
  });
  it('no debug-log: says debug is off, and lists nothing', () => {
    const toml = join(dir, 'plain.toml');
    writeFileSync(toml, '[runsc_config]\n  net-raw = "false"\n');
    expect(sh(runscDebugCommand(toml, undefined))).toBe(`(debug is off: no debug-log in ${toml})\n`);
    expect(sh(runscDebugCommand(join(dir, 'absent.toml'), undefined))).toContain('debug is off');
  });
});

describe('daemon logs and config', () => {
  it('a daemon this node does not run: says so', () => {
    expect(sh(daemonLogCommand('no-such-daemon-x'))).toContain('(no no-such-daemon-x log found');
  });
  it("containerd's effective config: the file with containerd's defaults merged in; a file it cannot load: the file itself, saying so", () => {
    const d = mkdtempSync(join(tmpdir(), 'gvisor-e2e-diag-'));
    const good = join(d, 'config.toml');
    writeFileSync(good, 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause:planted"\n');
    const dump = sh(effectiveConfigCommand(good));
    expect(dump).toContain('pause:planted');
    // Defaults the file does not spell out (containerd is installed on the test machine: .ci/setup).
    expect(dump).toMatch(/^root = "/m);
    const bad = join(d, 'bad.toml');
    writeFileSync(bad, 'version = [unclosed\n');
    expect(sh(effectiveConfigCommand(bad))).toBe(`# containerd config dump failed; the file ${bad}:\nversion = [unclosed\n`);
  });
});

describe('nodesToDiagnose', () => {
  const n = (name: string) => nodeConfig({ name, pool: 'p', access: { type: 'local' } });
  const nodes = [n('a'), n('b'), { ...n('c'), access: { type: 'api' as const } }];
  const summary = (checks: [string, string][]) => ({ checks: checks.map(([node, state]) => ({ node, state })) }) as unknown as RunSummary;
  it('the nodes of failed and broken checks; all reachable ones for a failure not tied to a node', () => {
    expect(nodesToDiagnose(summary([['a', 'failed'], ['b', 'passed']]), nodes).map((x) => x.name)).toEqual(['a']);
    expect(nodesToDiagnose(summary([['b', 'broken']]), nodes).map((x) => x.name)).toEqual(['b']);
    expect(nodesToDiagnose(summary([['cluster', 'failed']]), nodes).map((x) => x.name)).toEqual(['a', 'b']);
    expect(nodesToDiagnose(summary([['a', 'passed']]), nodes)).toEqual([]);
  });
});
