import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NODE_MARKER } from '../../clusters/local/host-node.ts';
import { type Config, type NodeConfig } from '../../harness/config.ts';
import { parseConfig } from '../../clusters/index.ts';
import { openNode, type NodeAccess } from '../../harness/node.ts';
import { restartContainerd } from '../../harness/installer.ts';
import { down, install, up } from '../../bin/app.ts';
import { cite, gardener, imageBuilder } from '../../suites/spec/index.ts';
import { cli, failures, latestSummary, localCluster, scratch, sshNodeConfig, stateRoot, writeConfig, runInstalled } from './helpers.ts';

// The four node-level suites against a real local cluster: a namespaced node running
// containerd 2.x + runsc + containerd-shim-runsc-v1 (pool "gvisor") and a Debian node booted by
// systemd-nspawn whose containerd is managed by systemd (pool "systemd"). Each suite is shown to
// pass on the good node and to fail — naming the cause and the spec rule's source — on a
// deliberately broken one.

/** A failure of the "no runtime table" kind: where the spec looked depends on the node's config version. */
const noRuntime = (handler: string) => (m: string) =>
  m.startsWith(`/etc/containerd/config.toml on gvisor-1 has no runtime "${handler}": expected a containerd.runtimes.${handler} table at [plugins.`) && m.endsWith(cite(gardener.runtimeTablePath));

const dir = scratch('node-suites');
const reports = join(dir, 'reports');
const name = `t${process.pid}`;
const raw = localCluster(
  name,
  reports,
  { pools: [{ name: 'gvisor', nodes: 1, kind: 'host' }, { name: 'systemd', nodes: 1, kind: 'systemd' }] },
  { gvisor: { pools: ['gvisor'], configFlags: { 'net-raw': 'false', debug: 'true' } }, containerd: { enableLimitNoFile: true, imagePullProgressTimeout: '5m0s' } },
);
const cfgPath = writeConfig(dir, 'config.yaml', raw);
const cfg: Config = parseConfig(JSON.stringify(raw), 'test config');
let nodes: NodeConfig[] = [];
let gv: NodeAccess;
let sd: NodeAccess;

/** `gvisor-e2e run` against the running cluster, without re-installing. */
const runSuites = (suites: string[], config = cfgPath) => runInstalled(config, reports, suites);

async function sh(node: NodeAccess, cmd: string): Promise<void> {
  const r = await node.exec(cmd);
  if (r.code !== 0) throw new Error(`${cmd}: ${r.stderr}`);
}

beforeAll(async () => {
  nodes = await up(cfg);
  await install(cfg, nodes);
  gv = openNode(nodes.find((n) => n.pool === 'gvisor')!);
  sd = openNode(nodes.find((n) => n.pool === 'systemd')!);
});

afterAll(async () => {
  await gv?.close();
  await sd?.close();
  await down(cfg);
  // Nothing the cluster made is left: no state, no node processes, no nspawn machine.
  expect(existsSync(join(stateRoot(), name))).toBe(false);
  const leftovers = readdirSync('/proc').filter((p) => {
    try {
      const env = readFileSync(`/proc/${p}/environ`, 'latin1');
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'latin1');
      return env.includes(`${NODE_MARKER}=${join(stateRoot(), name)}/`) || cmd.includes(`gve2e-${name}-`);
    } catch {
      return false;
    }
  });
  expect(leftovers).toEqual([]);
});

describe('on a correctly configured cluster', () => {
  it('all four node-level suites pass and the exit code is 0', () => {
    const r = runSuites(['runsc-installation', 'sandbox-dmesg', 'net-raw', 'limit-nofile']);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(r.summary.state).toBe('passed');
    expect(r.summary.suites.map((s) => [s.name, s.state])).toEqual([
      ['runsc-installation', 'passed'],
      ['sandbox-dmesg', 'passed'],
      ['net-raw', 'passed'],
      ['limit-nofile', 'passed'],
    ]);
    // Both pools were really checked: gVisor present on one, absent on the other.
    const names = r.summary.checks.map((c) => `${c.node}: ${c.name}`);
    expect(names).toContain('gvisor-1: runsc is installed at /var/bin/containerruntimes/runsc and executable');
    expect(names).toContain('systemd-1: (outside the gVisor pools) has no runsc at /var/bin/containerruntimes/runsc');
    expect(r.stdout).toMatch(/runsc-installation\s+│ PASS/);
    // The pinned build ships the one sidecar the module can build: the check passes, and warns about the others, in the terminal too.
    const sidecars = r.summary.checks.find((c) => c.node === 'gvisor-1' && c.name.startsWith("runsc's sidecar binaries"))!;
    expect(sidecars.state).toBe('passed');
    expect(sidecars.warnings).toHaveLength(1);
    expect(sidecars.warnings[0]).toContain('runsc on gvisor-1 runs without on-disk runsc-metric-server, checkpointgofer, gvisor-sentry-prewarmer in /var/bin/containerruntimes/gvisor-bin');
    expect(r.stdout).toContain("WARNING `runsc-installation` [gvisor-1] runsc on gvisor-1 runs without on-disk");
    // The ignored flag got the extension's treatment: a warning, and runsc.toml without it.
    expect(r.stderr).not.toContain('gvisor.configFlags.debug'); // --no-install: no install step, no warning
  });

  it('installing again changes nothing (idempotent)', async () => {
    const before = (await gv.exec('sha256sum /etc/containerd/config.toml /etc/containerd/runsc.toml /var/bin/containerruntimes/runsc')).stdout;
    const r = cli(['--config', cfgPath, 'install']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('[gvisor-1] already up to date');
    expect(r.stderr).toContain('gvisor.configFlags.debug is ignored: only "net-raw" is honoured');
    expect((await gv.exec('sha256sum /etc/containerd/config.toml /etc/containerd/runsc.toml /var/bin/containerruntimes/runsc')).stdout).toBe(before);
  });
});

describe('each suite fails on a broken node, naming the cause', () => {
  it('runsc missing: runsc-installation and sandbox-dmesg fail', async () => {
    await sh(gv, 'rm /var/bin/containerruntimes/runsc');
    try {
      const r = runSuites(['runsc-installation', 'sandbox-dmesg']);
      expect(r.code).toBe(1);
      const inst = failures(r.summary, 'runsc-installation');
      expect(inst.map((f) => f.message)).toContain(`runsc is missing on gvisor-1: expected an executable at /var/bin/containerruntimes/runsc${cite(gardener.binaries)}`);
      expect(inst.every((f) => f.state === 'failed')).toBe(true);
      const dm = failures(r.summary, 'sandbox-dmesg');
      expect(dm).toHaveLength(1);
      expect(dm[0]!.state).toBe('failed');
      expect(dm[0]!.message).toMatch(/could not start a pod sandbox with runtime handler "runsc" on gvisor-1: .*runsc/);
    } finally {
      await install(cfg, nodes);
    }
  });

  it('runsc not executable: runsc-installation says so', async () => {
    await sh(gv, 'chmod -x /var/bin/containerruntimes/runsc');
    try {
      const r = runSuites(['runsc-installation']);
      expect(r.code).toBe(1);
      expect(failures(r.summary, 'runsc-installation').map((f) => f.message)).toContain('runsc at /var/bin/containerruntimes/runsc on gvisor-1 is not an executable file: mode -rw-r--r-- (0644), regular file');
    } finally {
      await sh(gv, 'chmod +x /var/bin/containerruntimes/runsc');
    }
  });

  it('no ldd on the node: the shared-library check is broken (the node cannot be asked), not failed', async () => {
    // Hidden in the node's own mount namespace only (its propagation is private): a non-executable file over it.
    await sh(gv, 'LDD=$(command -v ldd) && : > /run/no-ldd && mount --bind /run/no-ldd "$LDD"');
    try {
      const r = runSuites(['runsc-installation']);
      expect(r.code, r.stderr.slice(-2000)).toBe(2);
      const c = r.summary.checks.find((x) => x.node === 'gvisor-1' && x.name.startsWith('runsc has every file it needs'))!;
      expect([c.state, c.message]).toEqual(['broken', "gvisor-1 has no ldd: cannot tell whether runsc's shared libraries resolve"]);
    } finally {
      await sh(gv, 'umount "$(command -v ldd 2>/dev/null || echo /usr/bin/ldd)" 2>/dev/null || umount /usr/bin/ldd; rm -f /run/no-ldd');
    }
    expect((await gv.exec('[ -x "$(command -v ldd)" ]')).code).toBe(0);
  });

  it('handler missing from containerd: runsc-installation and sandbox-dmesg fail', async () => {
    // Put back the node's original config.toml (no runsc runtime) and restart containerd.
    await sh(gv, 'cp /etc/containerd/config.toml /run/config.toml.good && cp /etc/containerd/config.toml.gvisor-e2e.orig /etc/containerd/config.toml');
    await restartContainerd(gv, cfg);
    try {
      const r = runSuites(['runsc-installation', 'sandbox-dmesg']);
      expect(r.code).toBe(1);
      const msgs = failures(r.summary, 'runsc-installation').map((f) => f.message);
      expect(msgs.some(noRuntime('runsc')), msgs.join('\n')).toBe(true);
      expect(msgs.some((m) => m.startsWith('containerd on gvisor-1 does not serve runtime handler "runsc" (it serves: runc'))).toBe(true);
      expect(failures(r.summary, 'sandbox-dmesg')[0]?.message).toMatch(/runtime handler "runsc" on gvisor-1.*(no runtime for "runsc"|not configured|unknown)/i);
    } finally {
      await sh(gv, 'cp /run/config.toml.good /etc/containerd/config.toml');
      await restartContainerd(gv, cfg);
    }
  });

  it('wrong handler: a config expecting handler "gvisor" (image-builder style) fails against a "runsc" node', () => {
    const wrong = writeConfig(dir, 'wrong-handler.yaml', { ...raw, gvisor: { ...raw.gvisor, handler: 'gvisor' } });
    const r = runSuites(['runsc-installation', 'sandbox-dmesg'], wrong);
    expect(r.code).toBe(1);
    const msgs = failures(r.summary, 'runsc-installation').map((f) => f.message);
    expect(msgs.some(noRuntime('gvisor')), msgs.join('\n')).toBe(true);
    expect(failures(r.summary, 'sandbox-dmesg')[0]?.message).toContain('runtime handler "gvisor" on gvisor-1');
  });

  it('net-raw flipped on the node: net-raw and runsc-installation fail', async () => {
    await sh(gv, `sed -i 's/net-raw = "false"/net-raw = "true"/' /etc/containerd/runsc.toml`);
    try {
      const r = runSuites(['net-raw', 'runsc-installation']);
      expect(r.code).toBe(1);
      expect(failures(r.summary, 'net-raw')[0]?.message).toMatch(/^net-raw is off but ping opened a raw socket in the sandbox on gvisor-1 \(exit 0; \/etc\/containerd\/runsc.toml has net-raw = "true"\)/);
      expect(failures(r.summary, 'runsc-installation').map((f) => f.message)).toContain(`/etc/containerd/runsc.toml on gvisor-1 sets net-raw = "true", expected "false"${cite(gardener.runscFlags)}`);
    } finally {
      await install(cfg, nodes);
    }
  });

  it('LimitNOFILE drop-in missing on the systemd node: limit-nofile fails', async () => {
    await sh(sd, 'rm /etc/systemd/system/containerd.service.d/limit-nofile.conf && systemctl daemon-reload && systemctl restart containerd');
    try {
      const r = runSuites(['limit-nofile']);
      expect(r.code).toBe(1);
      const msgs = failures(r.summary, 'limit-nofile').map((f) => `${f.node}: ${f.message}`);
      expect(msgs).toContain(
        `systemd-1: /etc/systemd/system/containerd.service.d/limit-nofile.conf is missing on systemd-1: expected LimitNOFILE=1048576 (os family "debian", containerd.enableLimitNoFile true)${cite(imageBuilder.limitNofileDropIn)}`,
      );
      expect(msgs.some((m) => m.startsWith('systemd-1: systemd on systemd-1 runs containerd with LimitNOFILE=infinity, expected 1048576'))).toBe(true);
    } finally {
      await install(cfg, nodes);
    }
  });

  it('LimitNOFILE drop-in with a wrong value: limit-nofile fails with the value found', async () => {
    await sh(sd, "sed -i 's/^LimitNOFILE=.*/LimitNOFILE=65536/' /etc/systemd/system/containerd.service.d/limit-nofile.conf && systemctl daemon-reload && systemctl restart containerd");
    try {
      const r = runSuites(['limit-nofile']);
      expect(r.code).toBe(1);
      const msgs = failures(r.summary, 'limit-nofile').map((f) => f.message);
      expect(msgs).toContain(`/etc/systemd/system/containerd.service.d/limit-nofile.conf on systemd-1 sets LimitNOFILE=65536, expected 1048576${cite(imageBuilder.limitNofileFile)}`);
    } finally {
      await install(cfg, nodes);
      await restartContainerd(sd, cfg);
    }
  });

  it('gVisor on a node outside the pool: runsc-installation fails', async () => {
    await sh(sd, 'mkdir -p /var/bin/containerruntimes && echo "#!/bin/sh" > /var/bin/containerruntimes/runsc && chmod +x /var/bin/containerruntimes/runsc');
    try {
      const r = runSuites(['runsc-installation']);
      expect(r.code).toBe(1);
      expect(failures(r.summary, 'runsc-installation').map((f) => f.message)).toEqual([
        `systemd-1 (pool "systemd") has /var/bin/containerruntimes/runsc, but gVisor must only be on pools gvisor${cite(gardener.gvisorOnPool)}`,
      ]);
    } finally {
      await sh(sd, 'rm -rf /var/bin/containerruntimes');
    }
  });
});

describe('faults', () => {
  it('containerd down on a node: the checks that need it are "broken" (exit 2), not "failed"', async () => {
    const pidFile = join(stateRoot(), name, 'nodes', 'gvisor-1', 'containerd.pid');
    process.kill(Number(readFileSync(pidFile, 'utf8').trim()), 'SIGKILL');
    try {
      const r = runSuites(['sandbox-dmesg']);
      expect(r.code, r.stderr.slice(-1500)).toBe(2);
      const f = failures(r.summary, 'sandbox-dmesg');
      expect(f.length).toBeGreaterThan(0);
      expect(f.every((x) => x.state === 'broken')).toBe(true);
      expect(f[0]!.message).toContain('containerd at /run/containerd/containerd.sock is unavailable');
    } finally {
      await restartContainerd(gv, cfg);
    }
  });
});

describe('node access is verified', () => {
  it('an SSH host key not in known_hosts is an error that shows the presented fingerprint (exit 2)', () => {
    const n = nodes.find((x) => x.pool === 'gvisor')!;
    const a = n.access as Extract<NodeConfig['access'], { type: 'ssh' }>;
    const otherKey = join(dir, 'other_host_key');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', otherKey]);
    const known = join(dir, 'wrong_known_hosts');
    writeFileSync(known, `[127.0.0.1]:${a.port} ${readFileSync(`${otherKey}.pub`, 'utf8').split(' ').slice(0, 2).join(' ')}\n`);
    const wrongReports = join(dir, 'reports-hostkey');
    const p = writeConfig(dir, 'hostkey.yaml', sshNodeConfig(n.name, { ...a, knownHostsPath: known }, wrongReports));
    const r = cli(['--config', p, 'run', '--no-install', '--suite', 'runsc-installation']);
    expect(r.code).toBe(2);
    const s = latestSummary(wrongReports);
    expect(s.suites[0]!.firstFailure).toMatch(
      new RegExp(`SSH host key of 127\\.0\\.0\\.1:${a.port} is not trusted: it presented SHA256:[A-Za-z0-9+/]{43}, which is not in ${known}`),
    );
  });
});

describe('net-raw "true"', () => {
  it('installs runsc.toml with net-raw = "true", and ping works in the sandbox', async () => {
    const on = { ...raw, gvisor: { ...raw.gvisor, configFlags: { 'net-raw': 'true' } } };
    const onPath = writeConfig(dir, 'net-raw-on.yaml', on);
    try {
      const r = cli(['--config', onPath, 'run', '--keep', '--suite', 'net-raw', 'runsc-installation']);
      expect(r.code, r.stderr.slice(-2000)).toBe(0);
      const s = latestSummary(reports);
      expect(s.checks.find((c) => c.suite === 'net-raw')?.name).toBe('raw sockets work in the sandbox (net-raw "true")');
    } finally {
      await install(cfg, nodes);
    }
  });
});
