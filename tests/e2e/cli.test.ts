import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SUITE_NAMES } from '../../harness/config.ts';
import { describe, expect, it } from 'vitest';
import { cli, latestSummary, scratch, sshNodeConfig, writeConfig } from './helpers.ts';

// The CLI's contract with CI: bad input is a usage error (64) that names the file and the field;
// an unreachable node is "broken" (2), never "failed" or "passed".

const dir = scratch('cli');

describe('bad input', () => {
  it('an unknown key: exit 64, naming the file and the field path', () => {
    const p = writeConfig(dir, 'typo.yaml', {
      apiVersion: 'gvisor-e2e.dev/v1alpha1',
      kind: 'Config',
      cluster: { provider: 'nodes', nodes: [{ name: 'n1', pool: 'gvisor', acess: { type: 'local' } }] },
      gvisor: { pools: ['gvisor'] },
    });
    const r = cli(['--config', p, 'run']);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain(`${p}: `);
    expect(r.stderr).toContain('cluster.nodes[0]: unknown key(s) "acess"');
    expect(r.stderr).toContain('cluster.nodes[0].access');
  });

  it('broken YAML: exit 64 with the line', () => {
    const p = join(dir, 'broken.yaml');
    writeFileSync(p, 'apiVersion: gvisor-e2e.dev/v1alpha1\nkind: Config\ncluster: [unclosed\n');
    const r = cli(['--config', p, 'doctor']);
    expect(r.code).toBe(64);
    expect(r.stderr).toMatch(new RegExp(`${p}: line \\d+, column \\d+`));
  });

  it('a missing file: exit 64 naming it', () => {
    const r = cli(['--config', join(dir, 'nope.yaml'), 'run']);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain(`${join(dir, 'nope.yaml')}: (root): cannot read the file: ENOENT`);
  });

  it('an unknown suite: exit 64 listing the valid ones', () => {
    const r = cli(['--config', join(import.meta.dirname, '../../fixtures/local.yaml'), 'run', '--suite', 'dmseg']);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain(`unknown suite "dmseg"; expected one of ${SUITE_NAMES.join(', ')}`);
  });

  it('a bad --retries value: exit 64 naming the flag', () => {
    const r = cli(['--config', join(import.meta.dirname, '../../fixtures/local.yaml'), 'run', '--retries', 'many']);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain('command line: --retries: expected a whole number from 0 to 10, got "many"');
  });

  it('an unknown command: non-zero', () => {
    expect(cli(['frobnicate']).code).toBe(64);
  });
});

describe('bad input: a sample of the corpus (tests/unit/fixtures/bad) through the CLI', () => {
  const bad = join(import.meta.dirname, '../unit/fixtures/bad');
  const local = join(import.meta.dirname, '../../fixtures/local.yaml');

  it.each([
    ['config/wrong-type-port.yaml', 'cluster.nodes[0].access.port: Invalid input: expected number, received string'],
    ['config/gvisor-pool-not-in-cluster-local.yaml', 'gvisor.pools[0]: no pool "gvisr" in cluster.pools (pools: gvisor)'],
    ['config/configflags-boolean.yaml', 'gvisor.configFlags.net-raw: Invalid input: expected string, received boolean'],
  ])('config %s: exit 64 with file, field and expectation', (file, message) => {
    const r = cli(['--config', join(bad, file), 'up']);
    expect(r.code, r.stderr).toBe(64);
    expect(r.stderr).toContain(`${join(bad, file)}: ${message}`);
  });

  it.each([
    ['manifest/shoot-container-runtimes-not-list.yaml', 'spec.provider.workers[0].cri.containerRuntimes: Invalid input: expected array, received object'],
    ['manifest/cr-provider-config-no-kind.yaml', 'spec.providerConfig.kind: Invalid input: expected "GVisorConfiguration"'],
  ])('manifest %s: exit 64 with file, field and expectation', (file, message) => {
    const r = cli(['--config', local, '--manifest', join(bad, file), 'up']);
    expect(r.code, r.stderr).toBe(64);
    expect(r.stderr).toContain(`${join(bad, file)}: ${message}`);
  });
});

describe('bad command-line arguments: exit 64 with the reason, before anything is started', () => {
  const local = join(import.meta.dirname, '../../fixtures/local.yaml');
  it.each([
    [['run', '--frobnicate'], "unknown option '--frobnicate'"],
    [['run', '--config'], "option '-c, --config <file>' argument missing"],
    [['--config', local, 'run', '--suite'], "option '-s, --suite <name...>' argument missing"],
    [['--config', local, 'run', 'extra'], "too many arguments for 'run'"],
    [['--config', local, 'run', '--suite', 'net-raw', '--skip', 'net-raw'], 'command line: --suite/--skip: no suite left to run: selected net-raw, skipped net-raw'],
  ])('%j', (args, message) => {
    const r = cli(args);
    expect(r.code, r.stderr).toBe(64);
    expect(r.stderr).toContain(message);
    // Rejected before any step began: no cluster was brought up.
    expect(r.stderr).not.toContain('▶');
  });
});

describe('infrastructure broken', () => {
  it('an unusable SSH key is named in a "broken" result', () => {
    const key = join(dir, 'bad-key');
    writeFileSync(key, 'not a key');
    const known = join(dir, 'known_hosts_empty');
    writeFileSync(known, '');
    const reports = join(dir, 'reports-badkey');
    const p = writeConfig(dir, 'badkey.yaml', sshNodeConfig('k-1', { host: '127.0.0.1', port: 1, privateKeyPath: key, knownHostsPath: known }, reports));
    const r = cli(['--config', p, 'run', '--no-install', '--suite', 'net-raw']);
    expect(r.code).toBe(2);
    expect(latestSummary(reports).suites[0]!.firstFailure).toContain(`[k-1] cannot use SSH private key ${key}: Cannot parse privateKey`);
  });

  it('an unreachable node makes the run "broken" with exit 2, not "failed"', () => {
    const key = join(dir, 'id');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
    const known = join(dir, 'known_hosts');
    writeFileSync(known, '');
    const reports = join(dir, 'reports');
    // Port 1 on loopback: nothing listens there.
    const p = writeConfig(dir, 'unreachable.yaml', sshNodeConfig('gone-1', { host: '127.0.0.1', port: 1, privateKeyPath: key, knownHostsPath: known }, reports));
    const r = cli(['--config', p, 'run', '--no-install', '--suite', 'runsc-installation']);
    expect(r.code).toBe(2);
    const s = latestSummary(reports);
    expect(s.state).toBe('broken');
    expect(s.suites[0]!.state).toBe('broken');
    // Refused connections are retried with backoff before the node is declared unreachable.
    expect(s.suites[0]!.firstFailure).toMatch(/gone-1.*SSH connection to root@127\.0\.0\.1:1 failed: connect ECONNREFUSED 127\.0\.0\.1:1 \(after 5 attempts\)/);
    expect(readFileSync(join(reports, 'latest', 'summary.md'), 'utf8')).toContain('| runsc-installation | BROKEN |');
  });
});
