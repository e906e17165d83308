// The lifecycle suite on a real Kubernetes cluster: gVisor removed from the pool and added back passes on a good node, fails naming a leftover on a broken one, and always leaves the pool as it found it.
import * as k8s from '@kubernetes/client-node';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig, providerFor } from '../../clusters/index.ts';
import { down, install, up } from '../../bin/app.ts';
import { chooseSuites, type Config, type NodeConfig } from '../../harness/config.ts';
import { STATE_FILE } from '../../harness/installer.ts';
import { GVISOR_NODE_LABEL, kubeConfig } from '../../harness/kube.ts';
import { openNode, readNodeFile, writeNodeFile, type NodeAccess } from '../../harness/node.ts';
import { cite, lifecycle } from '../../suites/spec/index.ts';
import { expectLocalClusterGone, failures, localCluster, runInstalled, scratch, writeConfig } from './helpers.ts';

// Pools "gvisor" and "plain" (host nodes with kubelets). The suite takes gVisor off pool "gvisor"
// (files, handler, label), checks a runc pod runs through it and gVisor pods stop landing there,
// puts it back and checks a gVisor pod boots, then installs once more and expects no change.

const dir = scratch('lifecycle');
const reports = join(dir, 'reports');
const name = `l${process.pid}`;
const raw = localCluster(name, reports, { kubernetes: true, pools: [{ name: 'gvisor', kind: 'host' }, { name: 'plain', kind: 'host' }] }, { gvisor: { pools: ['gvisor'] } });
const cfgPath = writeConfig(dir, 'config.yaml', raw);
const cfg: Config = parseConfig(JSON.stringify(raw), 'lifecycle test config');
let nodes: NodeConfig[] = [];
let gv: NodeAccess;
let core: k8s.CoreV1Api;

const runSuites = (suites: string[]) => runInstalled(cfgPath, reports, suites);
const gvisorLabel = async () => (await core.readNode({ name: 'gvisor-1' })).metadata?.labels?.[GVISOR_NODE_LABEL];
/** The files that make gVisor on the node, by hash (or "absent"). */
const gvisorFiles = async () => (await gv.exec('for f in /var/bin/containerruntimes/runsc /var/bin/containerruntimes/containerd-shim-runsc-v1 /etc/containerd/runsc.toml /etc/containerd/config.toml; do sha256sum "$f" 2>/dev/null || echo "absent $f"; done')).stdout;

beforeAll(async () => {
  nodes = await up(cfg);
  await install(cfg, nodes);
  gv = openNode(nodes.find((n) => n.pool === 'gvisor')!);
  core = kubeConfig(providerFor(cfg).kubeconfig()!).makeApiClient(k8s.CoreV1Api);
});

afterAll(async () => {
  await gv?.close();
  await down(cfg);
  expectLocalClusterGone(name);
});

describe('lifecycle', () => {
  it('is not run unless named: it changes the cluster', () => {
    expect(chooseSuites(cfg, providerFor(cfg).info().capabilities)).not.toContain('lifecycle');
    expect(chooseSuites(cfg, providerFor(cfg).info().capabilities, ['lifecycle'])).toEqual(['lifecycle']);
  });

  it('remove gVisor from the pool and add it back: every check passes, and the pool is as it was', async () => {
    const before = await gvisorFiles();
    const r = runSuites(['lifecycle']);
    expect(r.code, `${r.stderr.slice(-2000)}\n${JSON.stringify(failures(r.summary, 'lifecycle'))}`).toBe(0);
    expect(r.summary.checks.filter((c) => c.suite === 'lifecycle').map((c) => [c.name, c.state])).toEqual([
      ['gVisor removed from pool gvisor: its nodes keep no runsc, shim, runsc.toml, handler or label', 'passed'],
      ['with gVisor removed, gVisor pods do not schedule onto pool gvisor', 'passed'],
      ['a runc pod that was running keeps running through the removal', 'passed'],
      ['gVisor added back to pool gvisor: a "gvisor" pod runs there under gVisor again', 'passed'],
      ['a second install with nothing changed changes and restarts nothing', 'passed'],
    ]);
    expect(await gvisorFiles()).toBe(before);
    expect(await gvisorLabel()).toBe('true');
  });

  it('a runsc the install does not know it made stays behind: the removal check names it, and the pool still gets gVisor back', async () => {
    // The node's journal forgets runsc, as if a hand install had put it there: removal leaves it.
    const record = JSON.parse((await readNodeFile(gv, STATE_FILE))!) as { created: string[] };
    record.created = record.created.filter((f) => f !== '/var/bin/containerruntimes/runsc');
    await writeNodeFile(gv, STATE_FILE, JSON.stringify(record), '0600');
    const r = runSuites(['lifecycle']);
    expect(r.code).toBe(1);
    const f = failures(r.summary, 'lifecycle');
    expect(f[0]).toEqual({
      node: 'cluster',
      name: 'gVisor removed from pool gvisor: its nodes keep no runsc, shim, runsc.toml, handler or label',
      state: 'failed',
      message: `after gVisor was removed from pool gvisor, gvisor-1 still has /var/bin/containerruntimes/runsc${cite(lifecycle.removedFromPool)}`,
    });
    // Put back afterwards whatever failed.
    expect(await gvisorLabel()).toBe('true');
    expect(await gvisorFiles()).not.toContain('absent');
    expect(runSuites(['runsc-installation']).code).toBe(0);
  });
});
