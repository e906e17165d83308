import * as k8s from '@kubernetes/client-node';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Config, type NodeConfig } from '../../harness/config.ts';
import { parseConfig, providerFor } from '../../clusters/index.ts';
import { GVISOR_NODE_LABEL, kubeConfig } from '../../harness/kube.ts';
import { down, install, up } from '../../bin/app.ts';
import { cli, failures, latestSummary, localCluster, scratch, writeConfig, expectLocalClusterGone, runInstalled } from './helpers.ts';
import { cite, gardener } from '../../suites/spec/index.ts';

// The embedded Kubernetes cluster: etcd + kube-apiserver + controller-manager + scheduler as
// processes, a kubelet in each host node. gVisor is installed like the extension does it
// (RuntimeClass "gvisor", handler runsc, node label on the gVisor pool); all five suites pass,
// and the scheduling suite fails — naming the cause — when the RuntimeClass or the label is wrong.

const dir = scratch('kube');
const reports = join(dir, 'reports');
const name = `k${process.pid}`;
const raw = localCluster(name, reports, { kubernetes: true, pools: [{ name: 'gvisor', kind: 'host' }, { name: 'plain', kind: 'host' }] }, { gvisor: { pools: ['gvisor'] } });
const cfgPath = writeConfig(dir, 'config.yaml', raw);
const cfg: Config = parseConfig(JSON.stringify(raw), 'kube test config');
let nodes: NodeConfig[] = [];
let core: k8s.CoreV1Api;
let nodeApi: k8s.NodeV1Api;

const runSuites = (suites: string[]) => runInstalled(cfgPath, reports, suites);

beforeAll(async () => {
  nodes = await up(cfg);
  await install(cfg, nodes);
  const kc = kubeConfig(providerFor(cfg).kubeconfig()!);
  core = kc.makeApiClient(k8s.CoreV1Api);
  nodeApi = kc.makeApiClient(k8s.NodeV1Api);
});

afterAll(async () => {
  await down(cfg);
  expectLocalClusterGone(name);
});

describe('a real Kubernetes cluster with gVisor installed like the extension does', () => {
  it('has the RuntimeClass and node labels the extension creates', async () => {
    const rc = await nodeApi.readRuntimeClass({ name: 'gvisor' });
    expect(rc.handler).toBe('runsc');
    expect(rc.scheduling?.nodeSelector).toEqual({ [GVISOR_NODE_LABEL]: 'true' });
    const labels = Object.fromEntries((await core.listNode()).items.map((n) => [n.metadata!.name, n.metadata!.labels?.[GVISOR_NODE_LABEL]]));
    expect(labels).toEqual({ 'gvisor-1': 'true', 'plain-1': undefined });
  });

  it('all five suites pass, exit 0, and the suite namespaces are gone afterwards', async () => {
    const r = runSuites(['runsc-installation', 'sandbox-dmesg', 'net-raw', 'limit-nofile', 'runtimeclass-scheduling']);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(r.summary.suites.map((s) => [s.name, s.state])).toEqual([
      ['runsc-installation', 'passed'],
      ['sandbox-dmesg', 'passed'],
      ['net-raw', 'passed'],
      ['limit-nofile', 'passed'],
      ['runtimeclass-scheduling', 'passed'],
    ]);
    const sched = r.summary.checks.filter((c) => c.suite === 'runtimeclass-scheduling').map((c) => c.name);
    expect(sched).toContain('a gVisor pod pinned to a node outside the pool is not scheduled, and the event says why');
    // The cluster-level checks carry the suite's Allure labels (ctx.clusterTest), so the suite gets its own HTML page.
    const runDir = join(reports, r.summary.runId);
    const results = readdirSync(join(runDir, 'allure-results'))
      .filter((f) => f.endsWith('-result.json'))
      .map((f) => JSON.parse(readFileSync(join(runDir, 'allure-results', f), 'utf8')) as { name: string; labels: { name: string; value: string }[] });
    const labelled = results.filter((x) => x.labels.some((l) => l.name === 'feature' && l.value === 'runtimeclass-scheduling'));
    expect(labelled.map((x) => x.name).sort()).toEqual([...sched].sort());
    for (const x of labelled) {
      expect(x.labels).toEqual(expect.arrayContaining([{ name: 'epic', value: 'gVisor node conformance' }, { name: 'suite', value: 'runtimeclass-scheduling' }, { name: 'subSuite', value: 'cluster' }]));
    }
    expect(existsSync(join(runDir, 'html', 'runtimeclass-scheduling', 'index.html'))).toBe(true);
    // Namespaces are deleted (asynchronously: Terminating or gone, never Active).
    const left = (await core.listNamespace({ labelSelector: `gvisor-e2e.dev/run-id=${r.summary.runId}` })).items;
    expect(left.every((n) => n.status?.phase === 'Terminating')).toBe(true);
  });

  it('a RuntimeClass without the node selector: the scheduling suite fails, naming it', async () => {
    const rc = await nodeApi.readRuntimeClass({ name: 'gvisor' });
    await nodeApi.replaceRuntimeClass({ name: 'gvisor', body: { ...rc, scheduling: undefined } });
    try {
      const r = runSuites(['runtimeclass-scheduling']);
      expect(r.code).toBe(1);
      const msgs = failures(r.summary, 'runtimeclass-scheduling').map((f) => f.message);
      expect(msgs).toContain(`the "gvisor" pod's nodeSelector is {}, expected it to include ${GVISOR_NODE_LABEL}: "true" from the RuntimeClass${cite(gardener.runtimeClass)}`);
    } finally {
      await install(cfg, nodes);
    }
  });

  it('the gVisor pool without its node label: gVisor pods cannot be scheduled, and the report says why', async () => {
    await core.patchNode({ name: 'gvisor-1', body: { metadata: { labels: { [GVISOR_NODE_LABEL]: null } } } }, k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch));
    try {
      const r = runSuites(['runtimeclass-scheduling']);
      expect(r.code).toBe(1);
      const first = failures(r.summary, 'runtimeclass-scheduling')[0]!;
      expect(first.state).toBe('failed');
      expect(first.message).toMatch(/cannot be scheduled: 0\/2 nodes are available: 2 node\(s\) didn't match Pod's node affinity\/selector/);
    } finally {
      await install(cfg, nodes);
    }
  });

  const PINNED = 'a gVisor pod pinned to a node outside the pool is not scheduled, and the event says why';
  const mergePatch = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);

  it("the pinned check pins by the node's hostname label, not its name: a RuntimeClass without its selector fails it", async () => {
    // Before, the pod was pinned to kubernetes.io/hostname=<name>; with a hostname label that differs,
    // no node matched, and the refusal passed the check although the RuntimeClass selects nothing.
    const rc = await nodeApi.readRuntimeClass({ name: 'gvisor' });
    await nodeApi.replaceRuntimeClass({ name: 'gvisor', body: { ...rc, scheduling: undefined } });
    await core.patchNode({ name: 'plain-1', body: { metadata: { labels: { 'kubernetes.io/hostname': 'plain-1-host' } } } }, mergePatch);
    try {
      const r = runSuites(['runtimeclass-scheduling']);
      const pinned = r.summary.checks.find((c) => c.name === PINNED)!;
      expect(pinned.state, pinned.message).toBe('failed');
      expect(pinned.message).toBe(`the pinned gVisor pod was scheduled onto plain-1, outside the gVisor pool${cite(gardener.runtimeClass)}`);
    } finally {
      await core.patchNode({ name: 'plain-1', body: { metadata: { labels: { 'kubernetes.io/hostname': 'plain-1' } } } }, mergePatch);
      await install(cfg, nodes);
    }
  });

  it('a node outside the pool that takes no pods (cordoned) does not pass the pinned check: broken, naming why', async () => {
    // Before, any FailedScheduling message mentioning "node affinity/selector" passed, whatever else ruled the node out.
    await core.patchNode({ name: 'plain-1', body: { spec: { unschedulable: true } } }, mergePatch);
    try {
      const r = runSuites(['runtimeclass-scheduling']);
      const pinned = r.summary.checks.find((c) => c.name === PINNED)!;
      expect(pinned.state, pinned.message).toBe('broken');
      expect(pinned.message).toMatch(/^a pod without the RuntimeClass, pinned to plain-1 \(kubernetes\.io\/hostname=plain-1\), was not bound there \(0\/2 nodes are available: .*unschedulable.*\): the pinned check cannot tell why a gVisor pod is refused$/);
      expect(r.code).toBe(2);
    } finally {
      await core.patchNode({ name: 'plain-1', body: { spec: { unschedulable: false } } }, mergePatch);
    }
  });
});
