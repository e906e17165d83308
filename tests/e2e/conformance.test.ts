// The conformance-depth checks (issue 14) on one real Kubernetes cluster: each passes on the good node and fails, naming the cause, on a node broken on purpose.
import * as k8s from '@kubernetes/client-node';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig, providerFor } from '../../clusters/index.ts';
import { down, install, up } from '../../bin/app.ts';
import { type Config, type NodeConfig } from '../../harness/config.ts';
import { GVISOR_NODE_LABEL, kubeConfig } from '../../harness/kube.ts';
import { openNode, type NodeAccess } from '../../harness/node.ts';
import { cite, gardener, gvisor, imageBuilder, kubernetes } from '../../suites/spec/index.ts';
import { expectLocalClusterGone, failures, localCluster, runInstalled, scratch, writeConfig } from './helpers.ts';

// A local Kubernetes cluster in image-builder's layout (handler "gvisor", runsc in /usr/local/bin,
// image_pull_progress_timeout and additional settings): pool "gvisor" (host node, containerd 2.x,
// config version 3), pool "plain" (host node, runc only) and a systemd-nspawn node (Debian's
// containerd 1.6 run by systemd) for the unit drop-ins. Each broken node is put back by `install`.

const dir = scratch('conformance');
const reports = join(dir, 'reports');
const name = `c${process.pid}`;
const SETTINGS = '[debug]\n  level = "info"\n';
const raw = localCluster(
  name,
  reports,
  { kubernetes: true, pools: [{ name: 'gvisor', kind: 'host' }, { name: 'plain', kind: 'host' }, { name: 'systemd', kind: 'systemd' }] },
  {
    gvisor: { pools: ['gvisor'], handler: 'gvisor', runtimeClassName: 'gvisor', binaryPath: '/usr/local/bin', configFlags: { 'net-raw': 'false' } },
    containerd: { imagePullProgressTimeout: '5m0s', additionalSettings: SETTINGS },
  },
);
const cfgPath = writeConfig(dir, 'config.yaml', raw);
const cfg: Config = parseConfig(JSON.stringify(raw), 'conformance test config');
let nodes: NodeConfig[] = [];
let gv: NodeAccess;
let core: k8s.CoreV1Api;
let nodeApi: k8s.NodeV1Api;
const mergePatch = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);

const runSuites = (suites: string[]) => runInstalled(cfgPath, reports, suites);
const messages = (r: ReturnType<typeof runSuites>, suite: string) => failures(r.summary, suite).map((f) => `${f.node}: ${f.message}`);

async function sh(node: NodeAccess, cmd: string): Promise<void> {
  const r = await node.exec(cmd);
  if (r.code !== 0) throw new Error(`${cmd}: exit ${r.code}: ${r.stderr || r.stdout}`);
}

beforeAll(async () => {
  nodes = await up(cfg);
  await install(cfg, nodes);
  gv = openNode(nodes.find((n) => n.pool === 'gvisor')!);
  const kc = kubeConfig(providerFor(cfg).kubeconfig()!);
  core = kc.makeApiClient(k8s.CoreV1Api);
  nodeApi = kc.makeApiClient(k8s.NodeV1Api);
});

afterAll(async () => {
  await gv?.close();
  await down(cfg);
  expectLocalClusterGone(name);
});

describe('on the good cluster', () => {
  it('runsc-installation (with image-builder parity), sandbox-basics and runtimeclass-scheduling pass', async () => {
    const r = runSuites(['runsc-installation', 'sandbox-basics', 'runtimeclass-scheduling']);
    expect(r.code, `${r.stderr.slice(-3000)}\n${JSON.stringify(r.summary.checks.filter((c) => c.state !== 'passed'), null, 1).slice(0, 3000)}`).toBe(0);
    expect(r.summary.suites.map((s) => [s.name, s.state])).toEqual([
      ['runsc-installation', 'passed'],
      ['sandbox-basics', 'passed'],
      ['runtimeclass-scheduling', 'passed'],
    ]);
    const names = r.summary.checks.map((c) => `${c.node}: ${c.name}`);
    for (const n of ['gvisor-1', 'plain-1', 'systemd-1']) {
      expect(names).toContain(`${n}: /etc/systemd/system/containerd.service.d/max-tasks.conf sets TasksMax=infinity (image-builder)`);
      expect(names).toContain(`${n}: /etc/systemd/system/containerd.service.d/memory-pressure.conf sets OOMScoreAdjust=-999 (image-builder)`);
      expect(names).toContain(`${n}: config.toml imports /etc/containerd/conf.d/*.toml (image-builder)`);
      expect(names).toContain(`${n}: containerd itself reads containerd.additionalSettings`);
    }
    expect(names).toContain('gvisor-1: containerd-shim-runsc-v1 run without arguments refuses to start: "shim namespace cannot be empty"');
    expect(names).toContain('gvisor-1: runsc.toml holds only keys the extension writes');
    expect(r.summary.checks.filter((c) => c.suite === 'sandbox-basics' && c.node === 'gvisor-1').map((c) => c.name)).toEqual([
      '"echo hello" in a "gvisor" container is read back from its log',
      'a "gvisor" container has /etc/hosts and /etc/resolv.conf',
      'HOME is /root in a "gvisor" container',
    ]);
    expect(names).toContain('cluster: a "gvisor" pod\'s IP answers another pod');
    expect(names).toContain('cluster: HOME is /root in an exec into a "gvisor" pod');
    // containerd's own view of the timeout, on every node (a containerd older than 1.7 would pass with a warning: unit-tested).
    expect(r.summary.checks.filter((c) => c.name.startsWith('containerd itself reads image_pull_progress_timeout')).map((c) => [c.node, c.state]).sort()).toEqual([
      ['gvisor-1', 'passed'],
      ['plain-1', 'passed'],
      ['systemd-1', 'passed'],
    ]);
    // The run's own RuntimeClass is gone afterwards; only the configured one is left.
    expect((await nodeApi.listRuntimeClass()).items.map((c) => c.metadata?.name)).toEqual(['gvisor']);
  });
});

describe('runsc-installation fails on a broken node, naming the cause', () => {
  it('another runsc version, a shim that does not run, a foreign runsc.toml key, missing or wrong drop-ins, no conf.d import', async () => {
    await sh(
      gv,
      [
        'mv /usr/local/bin/runsc /usr/local/bin/runsc.real',
        `printf '#!/bin/sh\\nif [ "$1" = --version ]; then echo "runsc version release-20200101.0"; exit 0; fi\\nexec /usr/local/bin/runsc.real "$@"\\n' > /usr/local/bin/runsc`,
        'chmod +x /usr/local/bin/runsc',
        // A new file renamed over it: the shim of a pod still stopping may be running (ETXTBSY on a write in place).
        `printf '#!/bin/sh\\nexit 0\\n' > /usr/local/bin/shim.new && chmod +x /usr/local/bin/shim.new && mv -f /usr/local/bin/shim.new /usr/local/bin/containerd-shim-runsc-v1`,
        `printf '  platform = "ptrace"\\n' >> /etc/containerd/runsc.toml`,
        'rm /etc/systemd/system/containerd.service.d/max-tasks.conf',
        `sed -i 's/^OOMScoreAdjust=.*/OOMScoreAdjust=0/' /etc/systemd/system/containerd.service.d/memory-pressure.conf`,
        `sed -i '/^imports = /d' /etc/containerd/config.toml`,
      ].join(' && '),
    );
    try {
      const r = runSuites(['runsc-installation']);
      expect(r.code, r.stderr.slice(-2000)).toBe(1);
      const m = messages(r, 'runsc-installation');
      const D = '/etc/systemd/system/containerd.service.d';
      const [maxTasks, memory] = imageBuilder.unitDropIns('/etc/systemd/system');
      expect(m.some((x) => x.startsWith('gvisor-1: runsc on gvisor-1 reports version "release-20200101.0", expected v0.0.0-') && x.endsWith(`(gvisor.version latest, source build)${cite(gvisor.runscVersion)}`)), m.join('\n')).toBe(true);
      expect(m).toContain(`gvisor-1: /usr/local/bin/containerd-shim-runsc-v1 on gvisor-1 run without arguments exited 0 saying "(nothing)", expected exit 1 with "shim namespace cannot be empty"${cite(gvisor.shimAnswer)}`);
      expect(m).toContain(`gvisor-1: /etc/containerd/runsc.toml on gvisor-1 sets runsc_config.platform, which the extension does not write (expected only [runsc_config] with net-raw, debug, nvproxy, sidecar-usage-policy, sidecar-release-enforcement-policy)${cite(gardener.runscTomlKeys)}`);
      expect(m).toContain(`gvisor-1: ${D}/max-tasks.conf is missing on gvisor-1: expected a [Service] drop-in with TasksMax=infinity${cite(maxTasks!)}`);
      expect(m).toContain(`gvisor-1: ${D}/memory-pressure.conf on gvisor-1 sets OOMScoreAdjust=0, expected -999${cite(memory!)}`);
      expect(m).toContain(`gvisor-1: /etc/containerd/config.toml on gvisor-1 has imports = null, expected it to include "/etc/containerd/conf.d/*.toml"${cite(imageBuilder.configImports)}`);
      // Only the broken node fails.
      expect(failures(r.summary, 'runsc-installation').every((f) => f.node === 'gvisor-1' && f.state === 'failed')).toBe(true);
    } finally {
      await install(cfg, nodes);
      await sh(gv, 'rm -f /usr/local/bin/runsc.real');
    }
  });

  it("a version-2 runtime table in a version-3 file, and conf.d overriding the timeout and the additional settings: named with containerd's own view", async () => {
    // No restart: the file checks and `containerd config dump` read the files as they are now.
    await sh(
      gv,
      [
        'cp /etc/containerd/config.toml /run/conformance-config.toml',
        `sed -i 's/"io.containerd.cri.v1.runtime".containerd.runtimes.gvisor/"io.containerd.grpc.v1.cri".containerd.runtimes.gvisor/' /etc/containerd/config.toml`,
        'mkdir -p /etc/containerd/conf.d',
        `printf 'version = 3\\n[plugins."io.containerd.cri.v1.images"]\\n  image_pull_progress_timeout = "1m0s"\\n[debug]\\n  level = "debug"\\n' > /etc/containerd/conf.d/override.toml`,
      ].join(' && '),
    );
    try {
      const r = runSuites(['runsc-installation']);
      expect(r.code, r.stderr.slice(-2000)).toBe(1);
      const m = messages(r, 'runsc-installation');
      expect(m).toContain(
        'gvisor-1: /etc/containerd/config.toml on gvisor-1 has no runtime "gvisor": expected a containerd.runtimes.gvisor table at [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.gvisor] (config version 3); ' +
          `found [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor] instead, a table this containerd does not read for config version 3${cite(gardener.misplacedRuntimeTable)}`,
      );
      expect(m.some((x) => /^gvisor-1: containerd v2\.\S+ on gvisor-1 reads image_pull_progress_timeout = "1m0s" \(`containerd config dump`, imports merged\), expected "5m0s"/.test(x)), m.join('\n')).toBe(true);
      expect(m.some((x) => /^gvisor-1: containerd v2\.\S+ on gvisor-1 does not read containerd.additionalSettings at debug.level/.test(x)), m.join('\n')).toBe(true);
      // The file itself still says 5m0s: only containerd's own view shows the override.
      expect(r.summary.checks.find((c) => c.node === 'gvisor-1' && c.name === 'config.toml sets image_pull_progress_timeout = "5m0s"')?.state).toBe('passed');
    } finally {
      await sh(gv, 'cp /run/conformance-config.toml /etc/containerd/config.toml && rm -rf /etc/containerd/conf.d /run/conformance-config.toml');
    }
  });
});

describe('sandbox-basics fails on a broken node, naming the cause', () => {
  it("runsc.toml with network \"none\": the gVisor pod's IP does not answer", async () => {
    await sh(gv, `printf '  network = "none"\\n' >> /etc/containerd/runsc.toml`);
    try {
      const r = runSuites(['sandbox-basics']);
      expect(r.code, r.stderr.slice(-2000)).toBe(1);
      const m = messages(r, 'sandbox-basics');
      expect(m.some((x) => /^cluster: the "gvisor" pod on gvisor-1 \(IP [\d.]+\) did not answer pod basics-client on port 8080: /.test(x) && x.endsWith(cite(kubernetes.podIpAnswers))), m.join('\n')).toBe(true);
      // The rest of the sandbox still works.
      expect(m).toHaveLength(1);
    } finally {
      await install(cfg, nodes);
    }
  });

  it('runsc missing: every node-level check fails, naming the sandbox that could not start', async () => {
    await sh(gv, 'mv /usr/local/bin/runsc /run/runsc.moved');
    try {
      const r = runSuites(['sandbox-basics']);
      expect(r.code, r.stderr.slice(-2000)).toBe(1);
      // The cluster checks' pod cannot start either: the same cause.
      expect(failures(r.summary, 'sandbox-basics').filter((f) => f.node === 'cluster').map((f) => f.message.replace(/: .*/, ''))).toEqual(['could not start a pod sandbox with runtime handler "gvisor" on gvisor-1', 'could not start a pod sandbox with runtime handler "gvisor" on gvisor-1']);
      const node = failures(r.summary, 'sandbox-basics').filter((f) => f.node === 'gvisor-1');
      expect(node).toHaveLength(3);
      for (const f of node) expect(f.message).toMatch(/could not start a pod sandbox with runtime handler "gvisor" on gvisor-1: .*runsc/);
    } finally {
      await sh(gv, 'mv /run/runsc.moved /usr/local/bin/runsc');
    }
  });
});

describe('runtimeclass-scheduling: taints, tolerations and conflicting selectors', () => {
  const TAINT = { key: 'gvisor-e2e.dev/sandboxed', value: 'true', effect: 'NoSchedule' };
  const taint = (taints: k8s.V1Taint[] | null) => core.patchNode({ name: 'gvisor-1', body: { spec: { taints } } }, mergePatch);
  const TOLERATIONS = 'the RuntimeClass\'s tolerations are merged into the pod and cover the gVisor pool\'s taints';

  it('the gVisor pool tainted, the RuntimeClass without a toleration: the check names the taint; with the toleration, the pods land there', async () => {
    await taint([TAINT]);
    try {
      // Pods that cannot land wait out timeouts.container twice: a short one keeps this run short.
      const quick = writeConfig(dir, 'quick.yaml', { ...raw, timeouts: { container: '15s' } });
      const bad = runInstalled(quick, reports, ['runtimeclass-scheduling']);
      expect(bad.code).not.toBe(0);
      const t = bad.summary.checks.find((c) => c.name === TOLERATIONS)!;
      expect([t.state, t.message]).toEqual([
        'failed',
        `node gvisor-1 of the gVisor pool has taint gvisor-e2e.dev/sandboxed=true:NoSchedule, which the RuntimeClass "gvisor" does not tolerate (its tolerations: []): gVisor pods cannot land there${cite(kubernetes.tolerationsMerged)}`,
      ]);
      const rc = await nodeApi.readRuntimeClass({ name: 'gvisor' });
      await nodeApi.replaceRuntimeClass({ name: 'gvisor', body: { ...rc, scheduling: { ...rc.scheduling, tolerations: [{ key: TAINT.key, operator: 'Equal', value: TAINT.value, effect: TAINT.effect }] } } });
      const good = runSuites(['runtimeclass-scheduling']);
      expect(good.code, JSON.stringify(failures(good.summary, 'runtimeclass-scheduling'))).toBe(0);
      expect(good.summary.checks.find((c) => c.name === TOLERATIONS)?.state).toBe('passed');
    } finally {
      await taint(null);
      await install(cfg, nodes);
    }
  });

  it("a RuntimeClass without its node selector: a pod with a conflicting nodeSelector is admitted, and the report says so", async () => {
    const rc = await nodeApi.readRuntimeClass({ name: 'gvisor' });
    await nodeApi.replaceRuntimeClass({ name: 'gvisor', body: { ...rc, scheduling: undefined } });
    try {
      const r = runSuites(['runtimeclass-scheduling']);
      expect(r.code).toBe(1);
      const c = r.summary.checks.find((x) => x.name === "a pod whose nodeSelector conflicts with the RuntimeClass's is not scheduled, and the report says why")!;
      expect(c.state).toBe('failed');
      expect(c.message).toMatch(new RegExp(`^a pod with runtimeClassName "gvisor" and nodeSelector ${GVISOR_NODE_LABEL.replace(/[./]/g, '\\$&')}=false was admitted \\(scheduler: 0/\\d nodes are available: .*\\): RuntimeClass gvisor does not select ${GVISOR_NODE_LABEL.replace(/[./]/g, '\\$&')}=true`));
      expect(c.message!.endsWith(cite(kubernetes.conflictingSelectorRejected))).toBe(true);
    } finally {
      await install(cfg, nodes);
    }
  });
});
