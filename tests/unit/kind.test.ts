import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { parse as parseYaml } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { kindConfig, kindWorkers, renderKindConfig, runscHandlerPatch, POOL_LABEL } from '../../clusters/kind/config.ts';
import { dockerEngine, KindProvider, type CommandResult, type Runner } from '../../clusters/kind/index.ts';
import { type Config } from '../../harness/config.ts';
import { type KindCluster } from '../../clusters/kind/index.ts';
import { applyManifest, parseConfig, reproConfig } from '../../clusters/index.ts';
import { kindnetConflist, parseNodeRoutes } from '../../clusters/kind/network.ts';
import { parseManifest } from '../../harness/manifests.ts';
import { selectSuites } from '../../bin/app.ts';
import { ConfigError, InfrastructureError } from '../../harness/errors.ts';
import { GVISOR_NODE_LABEL } from '../../harness/kube.ts';
import { findRuntime, type TomlTable } from '../../harness/render.ts';
import { KIND_NODE_IMAGE } from '../../harness/versions.ts';

type KindConfig = Config & { cluster: KindCluster };

function kindCfg(cluster: string, gvisor = 'pools: [gvisor]'): KindConfig {
  return parseConfig(
    `apiVersion: gvisor-e2e.dev/v1alpha1\nkind: Config\ncluster:\n  provider: kind\n${cluster.replace(/^/gm, '  ')}\ngvisor:\n  ${gvisor}\n`,
    'kind.yaml',
  ) as KindConfig;
}

const TWO_POOLS = `name: e2e
pools:
  - name: gvisor
    nodes: 2
    labels: { team: sandbox }
  - name: plain`;

function configError(f: () => unknown): ConfigError {
  try {
    f();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('expected a ConfigError');
}

describe('kind provider config', () => {
  it('defaults the node image to the pinned kindest/node and names the cluster', () => {
    const c = kindCfg('pools: [{ name: gvisor }]');
    expect(c.cluster.nodeImage).toBe(KIND_NODE_IMAGE);
    // Pinned by digest: a tag alone can move or vanish (the e2e kind test checks it is kind's own default).
    expect(KIND_NODE_IMAGE).toMatch(/^kindest\/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}$/);
    expect(c.cluster.name).toBe('gvisor-e2e');
    expect(c.cluster.pools[0]).toEqual({ name: 'gvisor', nodes: 1, labels: {} });
  });

  it('names the field path of each error', () => {
    const e = configError(() => kindCfg('pools:\n  - name: gvisor\n    kind: host\n  - name: gvisor\nextraMounts: [{ hostPath: /x, containerPath: rel }]', 'pools: [gvisor, missing]'));
    const paths = e.issues.map((i) => i.path);
    expect(paths).toContain('cluster.pools[0]');
    expect(e.issues.find((i) => i.path === 'cluster.pools[0]')!.message).toContain('"kind"');
    expect(paths).toContain('cluster.extraMounts[0].containerPath');
    const dup = configError(() => kindCfg('pools: [{ name: gvisor }, { name: gvisor }]', 'pools: [gvisor, missing]'));
    expect(dup.issues).toEqual(
      expect.arrayContaining([
        { path: 'cluster.pools[1].name', message: 'duplicate pool name "gvisor"' },
        { path: 'gvisor.pools[1]', message: 'no pool "missing" in cluster.pools (pools: gvisor)' },
      ]),
    );
    expect(configError(() => kindCfg('name: Bad_Name\npools: [{ name: gvisor }]')).issues[0]!.path).toBe('cluster.name');
    expect(configError(() => kindCfg('pools: [{ name: gvisor, labels: { a: "not a value!" } }]')).issues[0]!.path).toBe('cluster.pools[0].labels.a');
  });

  it('includes the scheduling suite: a kind cluster always has a Kubernetes API', () => {
    expect(selectSuites(kindCfg('pools: [{ name: gvisor }]'))).toContain('runtimeclass-scheduling');
  });
});

describe('kind v1alpha4 config rendering', () => {
  it('names workers the way kind does, in pool order', () => {
    const c = kindCfg(TWO_POOLS);
    expect(kindWorkers(c.cluster, c.gvisor.pools)).toEqual([
      { name: 'e2e-worker', pool: 'gvisor', gvisor: true },
      { name: 'e2e-worker2', pool: 'gvisor', gvisor: true },
      { name: 'e2e-worker3', pool: 'plain', gvisor: false },
    ]);
  });

  it('renders one control plane and labelled workers per pool', () => {
    const c = kindCfg(`${TWO_POOLS}\nnodeImage: kindest/node:v1.35.4@sha256:${'a'.repeat(64)}\nextraMounts: [{ hostPath: /srv/x, containerPath: /x, readOnly: true }]`);
    const y = parseYaml(renderKindConfig(c)) as { kind: string; apiVersion: string; name: string; nodes: { role: string; image: string; labels?: Record<string, string>; extraMounts?: unknown[] }[]; containerdConfigPatches?: string[] };
    expect(y.kind).toBe('Cluster');
    expect(y.apiVersion).toBe('kind.x-k8s.io/v1alpha4');
    expect(y.name).toBe('e2e');
    expect(y.nodes.map((n) => n.role)).toEqual(['control-plane', 'worker', 'worker', 'worker']);
    expect(new Set(y.nodes.map((n) => n.image))).toEqual(new Set([`kindest/node:v1.35.4@sha256:${'a'.repeat(64)}`]));
    expect(y.nodes[0]!.labels).toBeUndefined();
    expect(y.nodes[1]!.labels).toEqual({ team: 'sandbox', [POOL_LABEL]: 'gvisor', [GVISOR_NODE_LABEL]: 'true' });
    expect(y.nodes[3]!.labels).toEqual({ [POOL_LABEL]: 'plain' });
    expect(y.nodes[3]!.extraMounts).toEqual([{ hostPath: '/srv/x', containerPath: '/x', readOnly: true }]);
    // Mixed pools: kind would patch the plain pool's containerd too, so the installer registers the handler per node.
    expect(y.containerdConfigPatches).toBeUndefined();
  });

  it('registers the handler through containerdConfigPatches when every worker is in a gVisor pool', () => {
    const c = kindCfg('pools: [{ name: gvisor, nodes: 2 }]', 'pools: [gvisor]\n  handler: gvisor\n  binaryPath: /usr/local/bin');
    const patches = kindConfig(c).containerdConfigPatches as string[];
    expect(patches).toHaveLength(1);
    const patch = parseToml(patches[0]!) as TomlTable;
    // kind skips a patch whose version differs from the node's (version 2 on kind nodes).
    expect(patch.version).toBe(2);
    expect(findRuntime(patch, 'gvisor')).toEqual({ runtime_type: 'io.containerd.runsc.v1', options: { TypeUrl: 'io.containerd.runsc.v1.options', ConfigPath: '/etc/containerd/runsc.toml' } });
  });

  it('for the local node image: no default CNI, no kube-proxy, kubeadm told the etcd tag; cgroup v1 and user patches go to kubeadm too', () => {
    const c = kindCfg(`pools: [{ name: gvisor }]\napiServerAddress: 10.1.2.3\napiServerPort: 6443\nkubeadmConfigPatches: ["kind: KubeletConfiguration\\nfeatureGates: { KubeletInUserNamespace: true }\\n"]`);
    const plain = kindConfig(c);
    expect(plain.networking).toEqual({ apiServerAddress: '10.1.2.3', apiServerPort: 6443 });
    expect(plain.kubeadmConfigPatches).toEqual(['kind: KubeletConfiguration\nfeatureGates: { KubeletInUserNamespace: true }\n']);
    const local = kindConfig(c, { image: 'gvisor-e2e.local/kind-node:x', localImage: { etcdTag: '3.6.16-0' }, cgroupV1: true });
    expect((local.nodes as { image: string }[]).map((n) => n.image)).toEqual(['gvisor-e2e.local/kind-node:x', 'gvisor-e2e.local/kind-node:x']);
    expect(local.networking).toEqual({ apiServerAddress: '10.1.2.3', apiServerPort: 6443, disableDefaultCNI: true, kubeProxyMode: 'none' });
    const patches = (local.kubeadmConfigPatches as string[]).map((p) => parseYaml(p) as Record<string, unknown>);
    expect(patches).toEqual([
      { kind: 'ClusterConfiguration', etcd: { local: { imageTag: '3.6.16-0' } } },
      { kind: 'KubeletConfiguration', failCgroupV1: false, cgroupDriver: 'cgroupfs' },
      { kind: 'KubeletConfiguration', featureGates: { KubeletInUserNamespace: true } },
    ]);
    // runc follows the kubelet's cgroup driver (kind's config.toml says systemd).
    const runc = parseToml((local.containerdConfigPatches as string[]).at(-1)!) as TomlTable;
    expect(runc.version).toBe(2);
    expect((findRuntime(runc, 'runc')?.options as TomlTable).SystemdCgroup).toBe(false);
  });

  it("merged into a kind node's config.toml (as kind's TOML merge patch does) keeps runc and adds the handler", () => {
    const c = kindCfg('pools: [{ name: gvisor }]');
    const base = parseToml(readFileSync(join(import.meta.dirname, 'fixtures', 'kind-node-containerd-v2.toml'), 'utf8')) as TomlTable;
    // RFC 7386 merge, which is what kind applies (jsonpatch.MergePatch) after converting both to JSON.
    const merge = (t: TomlTable, p: TomlTable): TomlTable => {
      for (const [k, v] of Object.entries(p)) {
        if (v && typeof v === 'object' && !Array.isArray(v) && t[k] && typeof t[k] === 'object') merge(t[k] as TomlTable, v as TomlTable);
        else t[k] = v;
      }
      return t;
    };
    const merged = merge(base, parseToml(runscHandlerPatch(c)) as TomlTable);
    expect(findRuntime(merged, 'runsc')?.runtime_type).toBe('io.containerd.runsc.v1');
    expect(findRuntime(merged, 'runc')?.runtime_type).toBe('io.containerd.runc.v2');
    expect((findRuntime(merged, 'runc')?.options as TomlTable).SystemdCgroup).toBe(true);
  });
});

// ---- the command sequence (recorded: evidence of what the provider asks kind for, not that a cluster works) ----

interface Recorder {
  run: Runner;
  calls: string[];
}

function recorder(answer: (cmd: string) => Partial<CommandResult> | undefined): Recorder {
  const calls: string[] = [];
  return {
    calls,
    run: async (argv) => {
      const cmd = argv.join(' ');
      calls.push(cmd);
      return { code: 0, stdout: '', stderr: '', ...answer(cmd) };
    },
  };
}

const scratch = mkdtempSync(join(tmpdir(), 'gvisor-e2e-kind-unit-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function provider(rec: Recorder, name: string): { p: KindProvider; cfg: KindConfig; state: string } {
  const state = join(scratch, name);
  const cfg = kindCfg(`name: ${name}\nstateDir: ${state}\nwait: 2m\npools: [{ name: gvisor }, { name: plain }]`);
  cfg.reportsDir = join(scratch, `${name}-reports`);
  const image = { archive: '/cache/busybox.oci.tar', image: 'gvisor-e2e.local/busybox:x', pause: 'gvisor-e2e.local/pause:x', id: 'sha256:0000' };
  return { p: new KindProvider(cfg, { run: rec.run, kind: 'kind', testImage: async () => image }), cfg, state };
}

const ENGINE_OK = { stdout: '20.10.24\n' };

describe('kind provider command sequence', () => {
  it('up: engine check, create with config + private kubeconfig + --wait, node check, kind load; down deletes', async () => {
    let created = false;
    const rec = recorder((cmd) => {
      if (cmd.startsWith('docker info')) return ENGINE_OK;
      if (cmd === 'kind get clusters') return { stdout: created ? 'seq\n' : '' };
      if (cmd.startsWith('kind create cluster')) created = true;
      if (cmd === 'kind get nodes --name seq') return { stdout: 'seq-control-plane\nseq-worker\nseq-worker2\n' };
      return undefined;
    });
    const { p, state } = provider(rec, 'seq');
    const nodes = await p.up();
    expect(rec.calls).toEqual([
      'docker info --format {{.ServerVersion}}',
      'kind get clusters',
      'docker network inspect kind',
      'docker info --format {{.CgroupVersion}}',
      `kind create cluster --name seq --config ${state}/kind-config.yaml --kubeconfig ${state}/kubeconfig --wait 2m --retain`,
      'kind get nodes --name seq',
      'kind load image-archive /cache/busybox.oci.tar --name seq --nodes seq-worker,seq-worker2',
    ]);
    expect(nodes.map((n) => [n.name, n.pool, n.access])).toEqual([
      ['seq-worker', 'gvisor', { type: 'docker', container: 'seq-worker' }],
      ['seq-worker2', 'plain', { type: 'docker', container: 'seq-worker2' }],
    ]);
    expect(nodes[0]!.containerd.restartCommand).toContain('systemctl restart containerd');
    expect(p.kubeconfig()).toBe(`${state}/kubeconfig`);
    expect(statSync(`${state}/kubeconfig`).mode & 0o777).toBe(0o600);
    expect(parseYaml(readFileSync(`${state}/kind-config.yaml`, 'utf8')).name).toBe('seq');

    // A second up re-attaches without creating anything.
    rec.calls.length = 0;
    await p.up();
    expect(rec.calls.filter((c) => c.startsWith('kind create'))).toEqual([]);

    rec.calls.length = 0;
    await p.down();
    expect(rec.calls).toEqual(['docker info --format {{.ServerVersion}}', `kind delete cluster --name seq --kubeconfig ${state}/kubeconfig`]);
    expect(existsSync(state)).toBe(false);
  });

  it('a failed create exports kind logs into the reports dir, deletes the cluster and is an InfrastructureError', async () => {
    let created = false;
    const rec = recorder((cmd) => {
      if (cmd.startsWith('docker info')) return ENGINE_OK;
      // --retain: kind leaves the nodes of a failed create for us to collect logs from.
      if (cmd === 'kind get clusters') return { stdout: created ? 'fail\n' : '' };
      if (cmd.startsWith('kind create cluster')) {
        created = true;
        return { code: 1, stderr: ' ✗ Starting control-plane 🕹️\nERROR: failed to create cluster: failed to init node with kubeadm' };
      }
      return undefined;
    });
    const { p, cfg, state } = provider(rec, 'fail');
    const err = await p.up().catch((e: Error) => e);
    expect(err).toBeInstanceOf(InfrastructureError);
    expect((err as Error).message).toContain('exited 1: ERROR: failed to create cluster: failed to init node with kubeadm');
    expect((err as Error).message).not.toContain('Starting control-plane');
    const logsCall = rec.calls.find((c) => c.startsWith('kind export logs'))!;
    expect(logsCall).toMatch(new RegExp(`^kind export logs ${cfg.reportsDir}/kind-logs/fail-\\d{8}T\\d{6} --name fail$`));
    expect((err as Error).message).toContain(`${cfg.reportsDir}/kind-logs/fail-`);
    const after = rec.calls.slice(rec.calls.indexOf(logsCall) + 1);
    expect(after).toEqual(['docker info --format {{.ServerVersion}}', `kind delete cluster --name fail --kubeconfig ${state}/kubeconfig`]);
    expect(existsSync(state)).toBe(false);
  });

  it('keeps what a partly failed kind export logs collected, and says it is partial', async () => {
    let created = false;
    const rec = recorder((cmd) => {
      if (cmd.startsWith('docker info')) return ENGINE_OK;
      if (cmd === 'kind get clusters') return { stdout: created ? 'partial\n' : '' };
      if (cmd.startsWith('kind create cluster')) {
        created = true;
        return { code: 1, stderr: 'ERROR: failed to create cluster: failed to init node with kubeadm' };
      }
      if (cmd.startsWith('kind export logs')) {
        const dir = cmd.split(' ')[3]!;
        mkdirSync(join(dir, 'partial-worker'), { recursive: true });
        writeFileSync(join(dir, 'partial-worker', 'journal.log'), 'journal');
        return { code: 1, stderr: 'Exporting logs for cluster "partial" to:\nERROR: [command "docker exec --privileged partial-worker crictl images" failed with error: exit status 126]' };
      }
      return undefined;
    });
    const { p, cfg } = provider(rec, 'partial');
    const err = (await p.up().catch((e: Error) => e)) as Error;
    const m = /\(kind logs: (\S+) \(partial: ERROR: \[command "docker exec --privileged partial-worker crictl images"/.exec(err.message);
    expect(m, err.message).not.toBeNull();
    expect(m![1]!.startsWith(join(cfg.reportsDir, 'kind-logs', 'partial-'))).toBe(true);
    expect(readFileSync(join(m![1]!, 'partial-worker', 'journal.log'), 'utf8')).toBe('journal');
  });

  it('a create that made no node exports nothing and says so', async () => {
    const rec = recorder((cmd) => {
      if (cmd.startsWith('docker info')) return ENGINE_OK;
      if (cmd.startsWith('kind create cluster')) return { code: 1, stderr: 'ERROR: failed to create cluster: failed to pull image "kindest/node:v1.35.4"' };
      return undefined;
    });
    const { p, cfg } = provider(rec, 'noimage');
    await expect(p.up()).rejects.toThrow(/failed to pull image "kindest\/node:v1\.35\.4" \(kind logs: none: kind made no node\)$/);
    expect(rec.calls.some((c) => c.startsWith('kind export logs'))).toBe(false);
    expect(rec.calls.at(-1)).toMatch(/^kind delete cluster --name noimage /);
    expect(existsSync(join(cfg.reportsDir, 'kind-logs'))).toBe(false);
  });

  it('without an engine, up says so plainly and runs no kind command', async () => {
    const rec = recorder((cmd) => (cmd.startsWith('docker info') ? { code: 1, stderr: 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n' } : undefined));
    const { p } = provider(rec, 'noengine');
    const err = await p.up().catch((e: Error) => e);
    expect(err).toBeInstanceOf(InfrastructureError);
    expect((err as Error).message).toBe(
      'no Docker engine is running (docker info: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?); the kind provider needs one: start dockerd or use provider local',
    );
    expect(rec.calls).toEqual(['docker info --format {{.ServerVersion}}']);
    // Nothing recorded: down has nothing to delete.
    await p.down();
    expect(rec.calls).toHaveLength(1);
  });

  it('refuses to replace a same-named kind cluster it did not record', async () => {
    const rec = recorder((cmd) => (cmd.startsWith('docker info') ? ENGINE_OK : cmd === 'kind get clusters' ? { stdout: 'theirs\n' } : undefined));
    const { p } = provider(rec, 'theirs');
    await expect(p.up()).rejects.toThrow(/a kind cluster "theirs" exists that gvisor-e2e did not record/);
    expect(rec.calls.some((c) => c.startsWith('kind create') || c.startsWith('kind delete'))).toBe(false);
  });

  it("does not take another provider's state dir for its own", async () => {
    const rec = recorder((cmd) => (cmd.startsWith('docker info') ? ENGINE_OK : undefined));
    const { p, state } = provider(rec, 'shared');
    mkdirSync(state, { recursive: true });
    writeFileSync(join(state, 'state.json'), JSON.stringify({ cluster: 'shared', nodes: [] }));
    await expect(p.up()).rejects.toThrow(/state.json belongs to another provider's cluster "shared"/);
    await expect(p.down()).rejects.toThrow(/belongs to another provider/);
    expect(rec.calls.some((c) => c.startsWith('kind '))).toBe(false);
    expect(existsSync(join(state, 'state.json'))).toBe(true);
  });

  it('dockerEngine reports a missing docker CLI', async () => {
    const e = await dockerEngine(async () => ({ code: 127, stdout: '', stderr: '\nspawn docker ENOENT' }));
    expect(e).toEqual({ ok: false, detail: 'no Docker engine is running (docker info: the docker CLI is not installed); the kind provider needs one: start dockerd or use provider local' });
  });
});

describe('kind: pools from a manifest, pod networking (pure parts)', () => {
  it("a Shoot's pools become kind pools: a known pool keeps its size and labels, a new one gets one worker", () => {
    const c = kindCfg('pools: [{ name: sandboxed, nodes: 2, labels: { team: a } }, { name: other }]', 'pools: [sandboxed]');
    const spec = parseManifest(readFileSync(join(import.meta.dirname, '../../fixtures/manifests/shoot.yaml'), 'utf8'), 'shoot.yaml');
    const out = applyManifest(c, spec) as KindConfig;
    expect(out.cluster.pools).toEqual([
      { name: 'sandboxed', nodes: 2, labels: { team: 'a' } },
      { name: 'default', nodes: 1, labels: {} },
    ]);
    expect(out.gvisor.pools).toEqual(['sandboxed']);
    expect(reproConfig(out)?.cluster.pools).toEqual(out.cluster.pools);
  });

  it("kindnetd's CNI config for a podCIDR, and node routes parsed from kubectl (a node without a podCIDR is pending)", () => {
    const conf = JSON.parse(kindnetConflist('10.244.1.0/24')) as { plugins: { type: string; ipam?: { ranges: { subnet: string }[][] } }[] };
    expect(conf.plugins.map((p) => p.type)).toEqual(['ptp', 'portmap']);
    expect(conf.plugins[0]!.ipam!.ranges).toEqual([[{ subnet: '10.244.1.0/24' }]]);
    expect(parseNodeRoutes('a 10.244.0.0/24 172.18.0.2\nb  172.18.0.3\n\nc 10.244.2.0/24 172.18.0.4\n')).toEqual({
      routes: [
        { name: 'a', podCIDR: '10.244.0.0/24', internalIP: '172.18.0.2' },
        { name: 'c', podCIDR: '10.244.2.0/24', internalIP: '172.18.0.4' },
      ],
      pending: ['b'],
    });
  });
});
