import * as k8s from '@kubernetes/client-node';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Config, type NodeConfig } from '../../harness/config.ts';
import { parseConfig, providerFor } from '../../clusters/index.ts';
import type { VmProvider } from '../../clusters/vm/index.ts';
import { GVISOR_NODE_LABEL, kubeConfig } from '../../harness/kube.ts';
import { MANAGED_LABEL, RUN_LABEL } from '../../harness/sandbox.ts';
import { down, install, up } from '../../bin/app.ts';
import { cli, latestSummary, localCluster, scratch, stateRoot, writeConfig, expectLocalClusterGone, suiteStates, ALL_SUITES_PASSED } from './helpers.ts';

// `provider: existing` against a real Kubernetes cluster the test made with the local provider (and
// installed gVisor on, as the extension would have): the harness gets only a kubeconfig with a
// service-account token (and SSH to one node), runs the suites, and afterwards has removed only
// what it made itself — never the customer's namespace, RuntimeClass or the labels that were there.

const dir = scratch('existing');
const name = `x${process.pid}`;
const localRaw = localCluster(name, join(dir, 'local-reports'), { kubernetes: true, pools: [{ name: 'gvisor', kind: 'host' }, { name: 'plain', kind: 'host' }] }, { gvisor: { pools: ['gvisor'] } });
const localCfg: Config = parseConfig(JSON.stringify(localRaw), 'existing test: local cluster');
const reports = join(dir, 'reports');
const existingState = join(stateRoot(), `${name}-existing`);
const kubeconfigPath = join(dir, 'customer.kubeconfig');
let token = '';
let nodes: NodeConfig[] = [];
let core: k8s.CoreV1Api;
let nodeApi: k8s.NodeV1Api;
const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);

function existingConfig(install: boolean): string {
  const gvisorNode = nodes.find((n) => n.pool === 'gvisor')!;
  const { pool: _pool, ...ssh } = gvisorNode; // SSH to the gVisor node only: plain-1 is reached through the API
  return writeConfig(dir, `existing-${install}.yaml`, {
    apiVersion: 'gvisor-e2e.dev/v1alpha1',
    kind: 'Config',
    cluster: { provider: 'existing', name: `${name}-existing`, kubeconfig: kubeconfigPath, context: 'customer', pools: [{ name: 'gvisor' }, { name: 'plain' }], nodes: [ssh], install, stateDir: existingState },
    gvisor: { pools: ['gvisor'] },
    reportsDir: reports,
  });
}

/** Every file under dir (reports: JSON, XML, HTML, attachments). */
function filesUnder(d: string): string[] {
  return readdirSync(d, { recursive: true, encoding: 'utf8' }).map((f) => join(d, f)).filter((f) => statSync(f).isFile());
}

const labelOf = async (node: string) => (await core.readNode({ name: node })).metadata?.labels?.[GVISOR_NODE_LABEL];
const rcExists = (n: string) => nodeApi.readRuntimeClass({ name: n }).then(() => true, (e: { code?: number }) => (e.code === 404 ? false : Promise.reject(e)));

beforeAll(async () => {
  nodes = await up(localCfg);
  await install(localCfg, nodes);
  const admin = kubeConfig(providerFor(localCfg).kubeconfig()!);
  core = admin.makeApiClient(k8s.CoreV1Api);
  nodeApi = admin.makeApiClient(k8s.NodeV1Api);
  const rbac = admin.makeApiClient(k8s.RbacAuthorizationV1Api);
  // What the customer had before the harness came: a namespace with an object, a RuntimeClass of their own.
  await core.createNamespace({ body: { metadata: { name: 'customer' } } });
  await core.createNamespacedConfigMap({ namespace: 'customer', body: { metadata: { name: 'keep-me' }, data: { a: 'b' } } });
  await nodeApi.createRuntimeClass({ body: { metadata: { name: 'customer-rc' }, handler: 'runc' } });
  // A token kubeconfig, as a shoot's would be: a service account bound to cluster-admin.
  await core.createNamespacedServiceAccount({ namespace: 'kube-system', body: { metadata: { name: 'e2e-tester' } } });
  await rbac.createClusterRoleBinding({
    body: { metadata: { name: 'e2e-tester' }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cluster-admin' }, subjects: [{ kind: 'ServiceAccount', name: 'e2e-tester', namespace: 'kube-system' }] },
  });
  const tr = await core.createNamespacedServiceAccountToken({ name: 'e2e-tester', namespace: 'kube-system', body: { spec: { audiences: [], expirationSeconds: 3600 } } });
  token = tr.status!.token;
  const cluster = admin.getCurrentCluster()!;
  writeFileSync(
    kubeconfigPath,
    stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [
        { name: 'shoot', cluster: { server: cluster.server, 'certificate-authority': cluster.caFile } },
        { name: 'nowhere', cluster: { server: 'https://127.0.0.1:1', 'certificate-authority': cluster.caFile } },
      ],
      users: [{ name: 'tester', user: { token } }],
      // The current context points nowhere: the harness must use cluster.context.
      contexts: [{ name: 'decoy', context: { cluster: 'nowhere', user: 'tester' } }, { name: 'customer', context: { cluster: 'shoot', user: 'tester' } }],
      'current-context': 'decoy',
    }),
    { mode: 0o600 },
  );
});

afterAll(async () => {
  await down(localCfg);
  expectLocalClusterGone(name);
  expect(existsSync(existingState)).toBe(false);
});

describe('provider: existing, on a cluster the harness did not create', () => {
  it('install: false — tests what is there: the suites pass, API-only node checks are skipped with the reason, only the run namespaces go', async () => {
    // Another harness's run on the same cluster (a colleague's, a concurrent CI job): its namespace is not ours to delete.
    await core.createNamespace({ body: { metadata: { name: 'another-harness-run', labels: { [RUN_LABEL]: 'someone-elses-run', [MANAGED_LABEL]: 'true' } } } });
    const r = cli(['--config', existingConfig(false), 'run']);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    const s = latestSummary(reports);
    expect(suiteStates(s)).toEqual(ALL_SUITES_PASSED);
    // The gVisor node (SSH) got every node-level check; plain-1 (API only) got them as skipped, with the reason.
    expect(s.checks.filter((c) => c.node === 'gvisor-1' && c.suite === 'runsc-installation').every((c) => c.state === 'passed')).toBe(true);
    const plain = s.checks.filter((c) => c.node === 'plain-1');
    expect(plain.length).toBeGreaterThan(0);
    expect(plain.every((c) => c.state === 'skipped')).toBe(true);
    expect(plain[0]!.message).toBe("needs the node's own filesystem, and plain-1 has no SSH access (add it to cluster.nodes to check this)");
    // What was there stays; the run's namespaces are deleted (Terminating or gone).
    expect(await rcExists('gvisor')).toBe(true);
    expect(await rcExists('customer-rc')).toBe(true);
    expect(await labelOf('gvisor-1')).toBe('true');
    expect((await core.readNamespacedConfigMap({ name: 'keep-me', namespace: 'customer' })).data).toEqual({ a: 'b' });
    expect((await core.readNamespace({ name: 'customer' })).status?.phase).toBe('Active');
    const left = (await core.listNamespace({ labelSelector: `${RUN_LABEL}=${s.runId}` })).items;
    expect(left.every((n) => n.status?.phase === 'Terminating')).toBe(true);
    expect((await core.readNamespace({ name: 'another-harness-run' })).status?.phase).toBe('Active');
    await core.deleteNamespace({ name: 'another-harness-run' });
    expect(existsSync(existingState), r.stderr.slice(-2500)).toBe(false);
    // The token never reaches a log line or a report file.
    expect(token.length).toBeGreaterThan(20);
    expect(r.stdout + r.stderr).not.toContain(token);
    for (const f of filesUnder(reports)) expect(readFileSync(f, 'latin1').includes(token), f).toBe(false);
  });

  it('install: true — adds only what is missing (the node label), tests the RuntimeClass that was there as it is, and removes only the label again', async () => {
    // The gVisor pool without the extension's node label; the RuntimeClass is there (the customer's).
    await core.patchNode({ name: 'gvisor-1', body: { metadata: { labels: { [GVISOR_NODE_LABEL]: null } } } }, merge);
    const uid = (await nodeApi.readRuntimeClass({ name: 'gvisor' })).metadata!.uid;
    const r = cli(['--config', existingConfig(true), 'run', '--suite', 'runtimeclass-scheduling', 'net-raw']);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(r.stderr).toContain(`labelled node gvisor-1 ${GVISOR_NODE_LABEL}=true`);
    expect(r.stderr).toContain('[gvisor-1] already up to date');
    expect(r.stderr).not.toContain('created RuntimeClass');
    expect(latestSummary(reports).suites.map((x) => [x.name, x.state])).toEqual([
      ['net-raw', 'passed'],
      ['runtimeclass-scheduling', 'passed'],
    ]);
    // Down removed the label it added, and nothing else: the RuntimeClass is the same object as before.
    expect(await labelOf('gvisor-1')).toBeUndefined();
    expect((await nodeApi.readRuntimeClass({ name: 'gvisor' })).metadata!.uid).toBe(uid);
    expect(await rcExists('customer-rc')).toBe(true);
    expect((await core.readNamespace({ name: 'customer' })).status?.phase).toBe('Active');
    expect(existsSync(existingState)).toBe(false);
    expect(r.stdout + r.stderr).not.toContain(token);
    for (const f of filesUnder(reports)) expect(readFileSync(f, 'latin1').includes(token), f).toBe(false);
  });

  it('install, then down: a RuntimeClass the harness created is recorded by uid and deleted again; the label was there, so it stays', async () => {
    await nodeApi.deleteRuntimeClass({ name: 'gvisor' });
    await core.patchNode({ name: 'gvisor-1', body: { metadata: { labels: { [GVISOR_NODE_LABEL]: 'true' } } } }, merge);
    const cfg = existingConfig(true);
    const i = cli(['--config', cfg, 'install']);
    expect(i.code, i.stderr.slice(-3000)).toBe(0);
    const made = await nodeApi.readRuntimeClass({ name: 'gvisor' });
    expect(made.metadata?.annotations?.['gvisor-e2e.dev/created-by']).toBe(`${name}-existing`);
    const state = JSON.parse(readFileSync(join(existingState, 'state.json'), 'utf8')) as { runtimeClasses: unknown[]; nodeLabels: unknown[] };
    expect(state.runtimeClasses).toEqual([{ name: 'gvisor', uid: made.metadata!.uid }]);
    expect(state.nodeLabels).toEqual([]);
    const d = cli(['--config', cfg, 'down']);
    expect(d.code, d.stderr.slice(-3000)).toBe(0);
    expect(await rcExists('gvisor')).toBe(false);
    expect(await labelOf('gvisor-1')).toBe('true');
    expect(await rcExists('customer-rc')).toBe(true);
    expect(existsSync(existingState)).toBe(false);
    expect(i.stdout + i.stderr + d.stdout + d.stderr).not.toContain(token);
  });

  it('a context the kubeconfig lacks, or no node matching a pool: exit 64 naming the field, no token in the message', () => {
    const bad = writeConfig(dir, 'bad-context.yaml', { apiVersion: 'gvisor-e2e.dev/v1alpha1', kind: 'Config', cluster: { provider: 'existing', kubeconfig: kubeconfigPath, context: 'nope', stateDir: existingState }, gvisor: { pools: ['gvisor'] } });
    const r = cli(['--config', bad, 'up']);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain(`config: cluster.context: no context "nope" in ${kubeconfigPath} (contexts: decoy, customer)`);
    const noPool = writeConfig(dir, 'no-pool.yaml', {
      apiVersion: 'gvisor-e2e.dev/v1alpha1',
      kind: 'Config',
      cluster: { provider: 'existing', kubeconfig: kubeconfigPath, context: 'customer', pools: [{ name: 'gvisor', selector: 'no-such-label=1' }], stateDir: existingState },
      gvisor: { pools: ['gvisor'] },
    });
    const r2 = cli(['--config', noPool, 'up']);
    expect(r2.code).toBe(64);
    expect(r2.stderr).toContain('config: cluster.pools[0].selector: no node of the cluster matches "no-such-label=1" (pool "gvisor")');
    expect(r.stderr + r2.stderr).not.toContain(token);
  });

  it('provider: vm with a kubeconfig treats the cluster as someone else\'s: a RuntimeClass or a label that is there is left, what it adds is recorded and removed by uninstall', async () => {
    // What the customer has: a RuntimeClass under the name the config uses (another handler), and their own value of the gVisor label on a plain node.
    await nodeApi.createRuntimeClass({ body: { metadata: { name: 'vm-existing-rc' }, handler: 'runc' } });
    await core.patchNode({ name: 'plain-1', body: { metadata: { labels: { [GVISOR_NODE_LABEL]: 'customer-value' } } } }, merge);
    const current = join(dir, 'customer-current.kubeconfig');
    writeFileSync(current, readFileSync(kubeconfigPath, 'utf8').replace('current-context: decoy', 'current-context: customer'), { mode: 0o600 });
    // Hosts that cannot be reached: only the Kubernetes objects are exercised here (the hosts' own install is vm.test.ts's).
    const host = (n: string, pool: string, port: number) => ({ name: n, pool, address: '127.0.0.1', port, user: 'root', privateKeyPath: join(dir, 'no-key'), hostKeyFingerprint: `SHA256:${'A'.repeat(43)}` });
    const vmCfg = (rc: string) =>
      parseConfig(JSON.stringify({ apiVersion: 'gvisor-e2e.dev/v1alpha1', kind: 'Config', cluster: { provider: 'vm', name: `${name}-vm`, hosts: [host('gvisor-1', 'gvisor', 1), host('plain-1', 'plain', 2)], kubeconfig: current }, gvisor: { pools: ['gvisor'], runtimeClassName: rc } }), 'vm test config');
    const vmState = join(process.env.GVISOR_E2E_STATE ?? join(process.env.HOME ?? '/root', '.local/state/gvisor-e2e'), `vm-${name}-vm`);
    try {
      const a = providerFor(vmCfg('vm-existing-rc'));
      await a.installKubernetesObjects((a as VmProvider).nodes());
      expect((await nodeApi.readRuntimeClass({ name: 'vm-existing-rc' })).handler).toBe('runc');
      expect(await labelOf('plain-1')).toBe('customer-value');
      expect(await labelOf('gvisor-1')).toBe('true');
      const b = providerFor(vmCfg('vm-new-rc'));
      await b.installKubernetesObjects((b as VmProvider).nodes());
      const made = await nodeApi.readRuntimeClass({ name: 'vm-new-rc' });
      expect(JSON.parse(readFileSync(join(vmState, 'state.json'), 'utf8')).runtimeClasses).toEqual([{ name: 'vm-new-rc', uid: made.metadata!.uid }]);
      // uninstall removes what it recorded first; the unreachable hosts then fail it, as they should.
      await expect(b.uninstall()).rejects.toThrow();
      expect(await rcExists('vm-new-rc')).toBe(false);
      expect(await rcExists('vm-existing-rc')).toBe(true);
      expect(existsSync(vmState)).toBe(false);
    } finally {
      await nodeApi.deleteRuntimeClass({ name: 'vm-existing-rc' }).catch(() => undefined);
      await core.patchNode({ name: 'plain-1', body: { metadata: { labels: { [GVISOR_NODE_LABEL]: null } } } }, merge).catch(() => undefined);
    }
  });
});
