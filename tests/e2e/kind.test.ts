import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { renderKindConfig } from '../../clusters/kind/config.ts';
import { kindBinary, type KindCluster } from '../../clusters/kind/index.ts';
import { parseConfig } from '../../clusters/index.ts';
import { go } from '../../harness/binaries.ts';
import { type Config } from '../../harness/config.ts';
import { KIND_NODE_IMAGE, KIND_VERSION } from '../../harness/versions.ts';
import { dockerdAvailable, groupEmpty, startPrivateDockerd, type PrivateDockerd } from './dockerd.ts';
import { ALL_SUITES_PASSED, cli, failures, latestSummary, runInstalled, scratch, stateRoot, suiteStates, writeConfig } from './helpers.ts';

// The kind provider against kind itself. This machine runs no Docker engine, and no kindest/node
// image can be pulled, so:
// - without an engine, `up` and `doctor` must say so plainly (exit 2);
// - with a private dockerd (own user, net, mount and pid namespaces, containerd, data-root, socket;
//   a veth link to this netns for the API server), kind validates our generated config with its own
//   code (strict v1alpha4 decoding, then Cluster.Validate, which runs only once an engine answers),
//   a good config with the default image fails only at pulling it, broken ones are rejected by kind;
// - `nodeImage: local` (a node image made here from pinned sources) gives a real kind cluster:
//   kubeadm, control plane, two workers, gVisor installed through docker exec, all five suites.

const dir = scratch('kind');
const reports = join(dir, 'reports');

function kindYamlConfig(name: string, cluster: object = {}): object {
  return {
    apiVersion: 'gvisor-e2e.dev/v1alpha1',
    kind: 'Config',
    cluster: { provider: 'kind', name, stateDir: join(stateRoot(), name), wait: '1m', pools: [{ name: 'gvisor', nodes: 1 }, { name: 'plain', nodes: 1 }], ...cluster },
    gvisor: { pools: ['gvisor'] },
    reportsDir: reports,
  };
}

afterAll(() => rmSync(dir, { recursive: true, force: true }));

const NO_ENGINE = { DOCKER_HOST: `unix://${join(dir, 'no-such-docker.sock')}` };

describe('kind provider without a Docker engine', () => {
  const file = writeConfig(dir, 'kind-noengine.yaml', kindYamlConfig('gve2e-noengine'));

  it('up exits 2 and says plainly that an engine is needed', () => {
    const r = cli(['-c', file, 'up'], NO_ENGINE);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain(`no Docker engine is running (docker info: `);
    expect(r.stderr).toContain('the kind provider needs one: start dockerd or use provider local');
    expect(existsSync(join(stateRoot(), 'gve2e-noengine'))).toBe(false);
  });

  it('doctor lists the missing engine and exits 2', () => {
    const r = cli(['-c', file, 'doctor'], NO_ENGINE);
    expect(r.code, r.stdout + r.stderr).toBe(2);
    const row = r.stdout.split('\n').find((l) => l.includes('Docker engine (docker info)'));
    expect(row, r.stdout).toBeDefined();
    expect(row).toMatch(/\bNO\b/);
    expect(r.stdout.replace(/[\s│┃|]+/g, ' ')).toContain('no Docker engine is');
  });
});

describe('kind against a private Docker engine (in a user namespace, linked to this netns)', () => {
  let d: PrivateDockerd;
  let kind: string;
  const name = 'gve2e-validate';
  const cfg = parseConfig(stringify(kindYamlConfig(name)), 'kind.yaml') as Config & { cluster: KindCluster };
  const good = renderKindConfig(cfg);

  /** Runs kind against the private engine with a config text; returns its exit code and output. */
  function kindCreate(configText: string, env: NodeJS.ProcessEnv = { DOCKER_HOST: d.host }, clusterName = name) {
    const file = join(dir, `kind-${Math.random().toString(36).slice(2, 8)}.yaml`);
    writeFileSync(file, configText);
    const r = spawnSync(kind, ['create', 'cluster', '--name', clusterName, '--config', file, '--kubeconfig', join(dir, 'kubeconfig'), '--retain'], {
      encoding: 'utf8',
      env: { ...process.env, ...env },
      timeout: 120_000,
    });
    return { code: r.status, out: `${r.stdout}${r.stderr}` };
  }

  beforeAll(async () => {
    const missing = dockerdAvailable();
    if (missing) throw new Error(`this test needs Debian's dockerd (.ci/setup installs docker.io): ${missing}`);
    kind = await kindBinary(cfg.cluster);
    d = await startPrivateDockerd({ userns: true, link: true });
    // DockerExecNode (the harness's access to kind nodes) finds the engine by DOCKER_HOST, as the docker CLI does.
    process.env.DOCKER_HOST = d.host;
  });

  afterAll(async () => {
    delete process.env.DOCKER_HOST;
    if (!d) return;
    const containers = spawnSync('docker', ['-H', d.host, 'ps', '-aq'], { encoding: 'utf8' }).stdout.trim();
    const pgid = Number(spawnSync('sh', ['-c', `ps -o pgid= -p $(cat ${d.dir}/docker.pid)`], { encoding: 'utf8' }).stdout.trim());
    await d.stop();
    expect(containers, 'containers left in the private engine').toBe('');
    expect(existsSync(d.dir), 'private dockerd dir').toBe(false);
    if (pgid) expect(groupEmpty(pgid), 'private dockerd processes').toBe(true);
  });

  it('a good config gets through kind decoding and validation and fails only at the node image', () => {
    const r = kindCreate(good);
    expect(r.code).toBe(1);
    // "Creating cluster" is logged after Config.Validate() passed; then only the image is missing.
    expect(r.out).toContain(`Creating cluster "${name}"`);
    expect(r.out).toContain(`failed to pull image "${KIND_NODE_IMAGE}"`);
    expect(r.out).not.toMatch(/unable to decode config|unknown apiVersion|invalid configuration/);
  });

  it('an unknown field is rejected by kind (strict v1alpha4 decoding)', () => {
    const y = parseYaml(good) as { nodes: Record<string, unknown>[] };
    y.nodes[1]!.label = y.nodes[1]!.labels;
    delete y.nodes[1]!.labels;
    const r = kindCreate(stringify(y));
    expect(r.code).toBe(1);
    expect(r.out).toContain('unable to decode config');
    expect(r.out).toContain('field label not found in type v1alpha4.Node');
  });

  it('a wrong apiVersion is rejected by kind', () => {
    const r = kindCreate(good.replace('kind.x-k8s.io/v1alpha4', 'kind.x-k8s.io/v1alpha3'));
    expect(r.code).toBe(1);
    expect(r.out).toContain('unknown apiVersion: kind.x-k8s.io/v1alpha3');
  });

  it("kind's Config.Validate runs only with an engine: a config without a control plane is rejected there", () => {
    const y = parseYaml(good) as { nodes: unknown[] };
    y.nodes.shift();
    const withEngine = kindCreate(stringify(y));
    expect(withEngine.code).toBe(1);
    expect(withEngine.out).toContain('must have at least one control-plane node');
    // Without an engine kind stops at provider detection, before validating: why this test needs dockerd.
    const without = kindCreate(stringify(y), NO_ENGINE);
    expect(without.code).toBe(1);
    expect(without.out).not.toContain('control-plane');
    expect(without.out).toContain('failed to get docker info');
  });

  it('`up` drives kind to the node image, exports logs, deletes what it made and exits 2', () => {
    const file = writeConfig(dir, 'kind-up.yaml', kindYamlConfig('gve2e-up'));
    const r = cli(['-c', file, 'up'], { DOCKER_HOST: d.host });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain('▶ kind create cluster "gve2e-up" (2 workers');
    expect(r.stderr).toContain(`failed to pull image "${KIND_NODE_IMAGE}"`);
    expect(r.stderr).toContain('exporting its logs, then deleting it');
    expect(r.stderr).toContain('✔ kind delete cluster "gve2e-up"');
    expect(existsSync(join(stateRoot(), 'gve2e-up')), 'state dir').toBe(false);
    // kind made no node before the image failed: nothing to export, and no empty logs dir is left.
    expect(r.stderr).toContain('(kind logs: none: kind made no node)');
    expect(existsSync(join(reports, 'kind-logs'))).toBe(false);
  });
  it("the default node image is the one the pinned kind release defaults to, by digest", async () => {
    const { Dir } = JSON.parse(await go(undefined, ['mod', 'download', '-json', `sigs.k8s.io/kind@${KIND_VERSION}`])) as { Dir: string };
    const src = readFileSync(join(Dir, 'pkg/apis/config/defaults/image.go'), 'utf8');
    expect(src).toContain(`const Image = "${KIND_NODE_IMAGE}"`);
  });

  describe('a kind cluster from the local node image: kubeadm, the control plane and all five suites', () => {
    // Pools named as in the Shoot fixture, so that `repro` of that Shoot fits this config.
    const name = 'gve2e-full';
    const engine = () => ({ DOCKER_HOST: d.host });
    const docker = (args: string[]) => spawnSync('docker', ['-H', d.host, ...args], { encoding: 'utf8', timeout: 120_000 });
    const inNode = (node: string, cmd: string) => {
      const r = docker(['exec', node, 'sh', '-c', cmd]);
      if (r.status !== 0) throw new Error(`docker exec ${node} ${cmd}: ${r.stderr}`);
      return r.stdout;
    };
    const gvisorNode = `${name}-worker`;
    let file = '';

    beforeAll(() => {
      file = writeConfig(dir, 'kind-full.yaml', {
        ...kindYamlConfig(name, {
          nodeImage: 'local',
          apiServerAddress: d.address,
          apiServerPort: 6443,
          wait: '3m',
          pools: [{ name: 'sandboxed', nodes: 1 }, { name: 'default', nodes: 1 }],
          // The engine runs in a user namespace (this machine lacks CAP_SYS_RESOURCE): the kubelet must
          // tolerate what it cannot do there (/dev/kmsg), as kind configures it for rootless engines.
          kubeadmConfigPatches: ['kind: KubeletConfiguration\nfeatureGates: { KubeletInUserNamespace: true }\n'],
        }),
        gvisor: { pools: ['sandboxed'] },
        containerd: { enableLimitNoFile: true },
      });
      const r = cli(['-c', file, 'up'], engine());
      expect(r.code, r.stderr.slice(-3000)).toBe(0);
      expect(r.stderr).toContain('lay pod networking on 3 kind nodes');
    }, 900_000);

    it('run: all five suites pass, exit 0, and no check on the gVisor node is skipped', () => {
      const r = cli(['-c', file, 'run', '--keep'], engine());
      expect(r.code, r.stderr.slice(-4000)).toBe(0);
      const s = latestSummary(reports);
      expect(suiteStates(s)).toEqual(ALL_SUITES_PASSED);
      expect(s.checks.filter((c) => c.node === gvisorNode && c.state !== 'passed').map((c) => `${c.suite}: ${c.name}: ${c.state} ${c.message ?? ''}`)).toEqual([]);
      // The CRI checks ran through the docker-exec forwarder, and gVisor pods ran on the gVisor node.
      expect(s.checks.map((c) => `${c.node}: ${c.name}`)).toEqual(expect.arrayContaining([`${gvisorNode}: containerd's CRI serves handler "runsc"`]));
      expect(inNode(gvisorNode, 'ls /var/bin/containerruntimes')).toContain('containerd-shim-runsc-v1');
    });

    it('a kind node broken on purpose fails the matching suite, naming the cause, exit 1', () => {
      const config = inNode(gvisorNode, 'cat /etc/containerd/config.toml');
      const runscToml = inNode(gvisorNode, 'cat /etc/containerd/runsc.toml');
      const restart = () => inNode(gvisorNode, 'systemctl restart containerd && for i in $(seq 60); do ctr version >/dev/null 2>&1 && exit 0; sleep 0.5; done; exit 1');
      try {
        // runsc removed
        inNode(gvisorNode, 'mv /var/bin/containerruntimes/runsc /var/bin/containerruntimes/runsc.moved');
        let r = runInstalled(file, reports, ['runsc-installation']);
        expect(r.code, r.stderr.slice(-2000)).toBe(1);
        expect(failures(r.summary, 'runsc-installation').map((f) => f.name)).toContain('runsc is installed at /var/bin/containerruntimes/runsc and executable');
        expect(failures(r.summary, 'runsc-installation').find((f) => f.name.startsWith('runsc is installed'))?.message).toContain('/var/bin/containerruntimes/runsc');
        // A failing run keeps kind's own logs (kind export logs) in its report dir.
        const logs = join(reports, r.summary.runId, 'kind-logs');
        expect(readdirSync(logs).length, r.stderr.slice(-1500)).toBe(1);
        expect(readdirSync(join(logs, readdirSync(logs)[0]!, gvisorNode))).toEqual(expect.arrayContaining(['containerd.log', 'kubelet.log']));
        inNode(gvisorNode, 'mv /var/bin/containerruntimes/runsc.moved /var/bin/containerruntimes/runsc');

        // handler renamed
        inNode(gvisorNode, `sed -i 's/runtimes\\.runsc\\]/runtimes.runsc-renamed]/; s/runtimes\\.runsc\\.options\\]/runtimes.runsc-renamed.options]/' /etc/containerd/config.toml`);
        restart();
        r = runInstalled(file, reports, ['runsc-installation', 'sandbox-dmesg']);
        expect(r.code, r.stderr.slice(-2000)).toBe(1);
        const rf = failures(r.summary, 'runsc-installation').filter((f) => f.node === gvisorNode);
        expect(rf.map((f) => f.name)).toContain('config.toml declares runtime handler "runsc" (io.containerd.runsc.v1)');
        expect(failures(r.summary, 'sandbox-dmesg').map((f) => f.message).join('\n')).toMatch(/runsc/);
        inNode(gvisorNode, `cat > /etc/containerd/config.toml <<'EOF'\n${config}EOF`);
        restart();

        // net-raw flipped
        inNode(gvisorNode, `sed -i 's/net-raw = "false"/net-raw = "true"/' /etc/containerd/runsc.toml`);
        r = runInstalled(file, reports, ['net-raw']);
        expect(r.code, r.stderr.slice(-2000)).toBe(1);
        expect(failures(r.summary, 'net-raw').map((f) => f.message).join('\n')).toMatch(/raw socket|ping/i);
      } finally {
        inNode(gvisorNode, `[ -e /var/bin/containerruntimes/runsc ] || mv /var/bin/containerruntimes/runsc.moved /var/bin/containerruntimes/runsc; cat > /etc/containerd/config.toml <<'EOF'\n${config}EOF\ncat > /etc/containerd/runsc.toml <<'EOF'\n${runscToml}EOF`);
        restart();
      }
    });

    it("repro of a Shoot with image-builder variables, -c the kind config: image-builder's layout on kind nodes, all suites pass; down leaves nothing in the engine", () => {
      expect(cli(['-c', file, 'down'], engine()).code).toBe(0);
      const shoot = join(import.meta.dirname, '../../fixtures/manifests/shoot.yaml');
      const vars = join(import.meta.dirname, '../../fixtures/image-builder/vars.yaml');
      const r = cli(['-c', file, 'repro', shoot, '--image-builder', vars], engine());
      expect(r.code, r.stderr.slice(-4000)).toBe(0);
      const s = latestSummary(reports);
      expect(suiteStates(s)).toEqual(ALL_SUITES_PASSED);
      expect(s.checks.map((c) => `${c.node}: ${c.name}`)).toContain(`${gvisorNode}: config.toml declares runtime handler "gvisor" (io.containerd.runsc.v1)`);
      expect(s.checks.map((c) => `${c.node}: ${c.name}`)).toContain(`${gvisorNode}: runsc is installed at /usr/local/bin/runsc and executable`);
      // repro without --keep took the cluster down: no container, volume, network or image of ours is left.
      expect(docker(['ps', '-aq']).stdout.trim()).toBe('');
      expect(docker(['volume', 'ls', '-q']).stdout.trim()).toBe('');
      expect(docker(['images', '-q']).stdout.trim()).toBe('');
      expect(docker(['network', 'ls', '--format', '{{.Name}}']).stdout.trim().split('\n').sort()).toEqual(['host', 'none']);
      expect(existsSync(join(stateRoot(), name))).toBe(false);
    });
  });
});
