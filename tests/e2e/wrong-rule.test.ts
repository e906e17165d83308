// A deliberately wrong installer rule turns the suites red end to end: the suites judge by suites/spec, not by the installer's rules.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Config, type NodeConfig } from '../../harness/config.ts';
import { parseConfig } from '../../clusters/index.ts';
import { INSTALL_RULES, type InstallRules } from '../../harness/installer.ts';
import { down, install, up } from '../../bin/app.ts';
import { cite, gardener, imageBuilder } from '../../suites/spec/index.ts';
import { cli, expectLocalClusterGone, failures, latestSummary, localCluster, scratch, writeConfig, runInstalled } from './helpers.ts';

// One host node in the gVisor pool, net-raw "false" and containerd.enableLimitNoFile true. The
// cluster is installed with the installer's own rules (the suites pass), then with a wrong rule
// object: the suite that covers the rule fails, naming the value the spec expects and the rule's
// upstream source. Nothing in the suites knows which rule was swapped.

const dir = scratch('wrong-rule');
const reports = join(dir, 'reports');
const name = 'wrongrule';
const raw = localCluster(
  name,
  reports,
  { pools: [{ name: 'gvisor', nodes: 1, kind: 'host' }] },
  { gvisor: { pools: ['gvisor'], configFlags: { 'net-raw': 'false' } }, containerd: { enableLimitNoFile: true } },
);
const cfgPath = writeConfig(dir, 'config.yaml', raw);
const cfg: Config = parseConfig(JSON.stringify(raw), 'wrong-rule config');
let nodes: NodeConfig[] = [];
let isDown = false;

/** The `install` verb with an injected rule object. */
const installWith = (rules: InstallRules) => install(cfg, nodes, rules);
/** `gvisor-e2e run` against the running cluster, without re-installing. */
const runSuites = (suites: string[]) => runInstalled(cfgPath, reports, suites);

beforeAll(async () => {
  nodes = await up(cfg);
  await install(cfg, nodes);
});

afterAll(async () => {
  if (!isDown) await down(cfg);
});

describe('installed with the installer own rules', () => {
  it('runsc-installation, net-raw and limit-nofile pass', () => {
    const r = runSuites(['runsc-installation', 'net-raw', 'limit-nofile']);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(r.summary.suites.map((s) => [s.name, s.state])).toEqual([
      ['runsc-installation', 'passed'],
      ['net-raw', 'passed'],
      ['limit-nofile', 'passed'],
    ]);
  });
});

describe('installed with a wrong rule, the covering suite fails naming the expectation and its source', () => {
  it('runscFlags that writes net-raw "true" although the config says "false": runsc-installation and net-raw fail', async () => {
    await installWith({ ...INSTALL_RULES, runscFlags: () => ({ 'net-raw': 'true' }) });
    try {
      const r = runSuites(['runsc-installation', 'net-raw']);
      expect(r.code, r.stderr.slice(-3000)).toBe(1);
      expect(r.summary.suites.map((s) => [s.name, s.state])).toEqual([
        ['runsc-installation', 'failed'],
        ['net-raw', 'failed'],
      ]);
      const inst = failures(r.summary, 'runsc-installation');
      expect(inst.map((f) => [f.node, f.state, f.message])).toEqual([
        ['gvisor-1', 'failed', `/etc/containerd/runsc.toml on gvisor-1 sets net-raw = "true", expected "false"${cite(gardener.runscFlags)}`],
      ]);
      const nr = failures(r.summary, 'net-raw');
      expect(nr).toHaveLength(1);
      expect(nr[0]!.message).toMatch(/^net-raw is off but ping opened a raw socket in the sandbox on gvisor-1 \(exit 0; \/etc\/containerd\/runsc.toml has net-raw = "true"\)/);
      expect(nr[0]!.message.endsWith(cite(gardener.runscFlags))).toBe(true);
      expect(nr[0]!.message).toContain('gardener-extension-runtime-gvisor pkg/charts/values.go');
    } finally {
      await installWith(INSTALL_RULES);
    }
  });

  it('a LimitNOFILE rule that ignores containerd.enableLimitNoFile: limit-nofile fails', async () => {
    await installWith({ ...INSTALL_RULES, limitNofileDropIn: (osFamily) => ['flatcar', 'azurelinux', 'mariner'].includes(osFamily) });
    try {
      const r = runSuites(['limit-nofile']);
      expect(r.code, r.stderr.slice(-3000)).toBe(1);
      expect(r.summary.suites.map((s) => [s.name, s.state])).toEqual([['limit-nofile', 'failed']]);
      const msgs = failures(r.summary, 'limit-nofile').map((f) => f.message);
      const missing = msgs.find((m) => m.startsWith('/etc/systemd/system/containerd.service.d/limit-nofile.conf is missing on gvisor-1: expected LimitNOFILE=1048576 (os family "'));
      expect(missing, msgs.join('\n')).toBeDefined();
      expect(missing).toContain('containerd.enableLimitNoFile true)');
      expect(missing!.endsWith(cite(imageBuilder.limitNofileDropIn))).toBe(true);
      expect(missing).toContain('image-builder docs/book/src/capi/containerd/customizing-containerd.md');
    } finally {
      await installWith(INSTALL_RULES);
    }
  });
});

describe('down', () => {
  it('removes the cluster', async () => {
    await down(cfg);
    isDown = true;
    expectLocalClusterGone(name);
  });
});
