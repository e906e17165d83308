// What the providers of hosts the harness did not create share: undoing an install on them, and
// the doctor's checks of a node it reaches over SSH (or another node access).
import type { Config, NodeConfig } from '../../harness/config.ts';
import { CriClient } from '../../harness/cri.ts';
import { uninstallNode } from '../../harness/installer.ts';
import { log, step } from '../../harness/log.ts';
import { mapLimit } from '../../harness/map-limit.ts';
import { openNode, sh } from '../../harness/node.ts';
import { removeLeftoverPods } from '../../harness/sandbox.ts';
import type { Finding } from '../provider.ts';

/** Removes pods a crashed run left behind (found by the harness's own label), then what install put on each host. */
export async function uninstallHosts(cfg: Config, hosts: NodeConfig[]): Promise<void> {
  await mapLimit(hosts, 4, async (n) => {
    const node = openNode(n);
    try {
      const cri = await CriClient.connect(node, n.paths.containerdSocket).catch(() => undefined);
      if (cri) {
        const removed = await removeLeftoverPods(cri).catch(() => 0);
        if (removed) log('info', `[${n.name}] removed ${removed} leftover pod sandbox(es)`);
        cri.close();
      }
      const undone = await step(`uninstall from ${n.name}`, () => uninstallNode(node, cfg));
      log('info', `[${n.name}] restored/removed: ${undone.join(', ') || 'nothing'}`);
    } finally {
      await node.close();
    }
  });
}

/** doctor, per node the harness reaches: tools, the CRI socket, scratch space. */
export async function doctorNodes(nodes: NodeConfig[]): Promise<Finding[]> {
  const f: Finding[] = [];
  for (const n of nodes) {
    const node = openNode(n);
    try {
      const r = await node.exec('command -v ctr && command -v runc && command -v sha256sum', { timeoutMs: 20_000 });
      f.push({ check: `${n.name}: reachable, ctr/runc/sha256sum present`, ok: r.code === 0, detail: r.code === 0 ? r.stdout.trim().split('\n').join(' ') : (r.stderr || r.stdout).trim() || 'a tool is missing', fix: r.code === 0 ? undefined : 'install containerd, runc and coreutils on the node' });
      const cri = await CriClient.connect(node, n.paths.containerdSocket, 10_000);
      try {
        const v = await cri.version();
        f.push({ check: `${n.name}: CRI at ${n.paths.containerdSocket}`, ok: true, detail: `${v.runtime_name} ${v.runtime_version}` });
      } finally {
        cri.close();
      }
      const tmp = await node.exec(`test -w ${sh(n.paths.tmpDir)}`);
      f.push({ check: `${n.name}: ${n.paths.tmpDir} writable`, ok: tmp.code === 0, detail: tmp.code === 0 ? 'yes' : 'no', fix: tmp.code === 0 ? undefined : 'set paths.tmpDir' });
    } catch (e) {
      f.push({ check: `${n.name}: reachable`, ok: false, detail: (e as Error).message, fix: 'check cluster.nodes[].access' });
    } finally {
      await node.close();
    }
  }
  return f;
}
