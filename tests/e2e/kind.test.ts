import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseToml } from 'smol-toml';
import { renderKindConfig } from '../../clusters/kind/config.ts';
import { kindBinary } from '../../clusters/kind/index.ts';
import { ensureNspawnRootfs } from '../../clusters/local/nspawn-node.ts';
import { buildGVisor, cacheRoot } from '../../harness/binaries.ts';
import { type Config, nodeConfig } from '../../harness/config.ts';
import { type KindCluster } from '../../clusters/kind/index.ts';
import { parseConfig } from '../../clusters/index.ts';
import { buildTestImage } from '../../harness/image.ts';
import { installNode } from '../../harness/installer.ts';
import { mustExec, openNode, readNodeFile } from '../../harness/node.ts';
import { findRuntime, MANAGED_HEADER, runtimeEntry, type TomlTable } from '../../harness/render.ts';
import { KIND_NODE_IMAGE } from '../../harness/versions.ts';
import { until } from '../../harness/wait.ts';
import { dockerdAvailable, groupEmpty, startPrivateDockerd, type PrivateDockerd } from './dockerd.ts';
import { makeKindNodeImage } from './kind-node-image.ts';
import { cli, scratch, stateRoot, writeConfig } from './helpers.ts';

// The kind provider against kind itself. This machine runs no Docker engine, and no kindest/node
// image can be pulled, so:
// - without an engine, `up` and `doctor` must say so plainly (exit 2);
// - with a private dockerd (own netns, containerd, data-root, socket), kind gets past provider
//   detection and validates our generated config with its own code (strict v1alpha4 decoding,
//   then Cluster.Validate, which runs only once an engine answers); a good config must then fail
//   only at the node image, and broken ones must be rejected by kind with kind's message.

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

describe('kind validates the generated config (private dockerd, no pullable node image)', () => {
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
    d = await startPrivateDockerd();
    // DockerExecNode (the harness's access to kind nodes) runs the docker CLI with this environment.
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

  describe('nodes from a kind node image made here (no registry; no kubeadm or control-plane images either)', () => {
    const image = 'gvisor-e2e.local/kind-node:test';
    const booted = 'gve2e-boot';
    const bootCfg = parseConfig(stringify(kindYamlConfig(booted, { nodeImage: image, pools: [{ name: 'gvisor', nodes: 1 }] })), 'kind.yaml') as Config & { cluster: KindCluster };

    beforeAll(async () => {
      const rootfsTar = await ensureNspawnRootfs({ cacheDir: join(cacheRoot(), 'rootfs') });
      await makeKindNodeImage({ dockerHost: d.host, rootfsTar, tag: image });
    });

    it('kind boots the nodes, applies our containerdConfigPatches, and the installer puts gVisor in through docker exec', async () => {
      try {
        const r = kindCreate(renderKindConfig(bootCfg), { DOCKER_HOST: d.host }, booted);
        // kind gets as far as it can without Kubernetes: nodes made, configuration (containerd patch) written.
        expect(r.out).toContain('✓ Preparing nodes');
        expect(r.out).toContain('✓ Writing configuration');
        expect(r.out).toContain('failed to init node with kubeadm');
        expect(r.out).toContain('"kubeadm": executable file not found');

        const node = openNode(nodeConfig({ name: `${booted}-worker`, pool: 'gvisor', access: { type: 'docker', container: `${booted}-worker` } }));
        // kind does not wait for systemd on cgroup v1 hosts; the node's containerd comes up under it.
        await until(`systemd and containerd in ${booted}-worker`, 60_000, async () => (await node.exec('[ "$(cat /proc/1/comm)" = systemd ] && systemctl is-active containerd')).code === 0);
        const patched = parseToml((await readNodeFile(node, '/etc/containerd/config.toml'))!) as TomlTable;
        expect(patched.version).toBe(2);
        // kind's own merge of our version-2 patch into the node's config.toml:
        expect(findRuntime(patched, 'runsc')).toEqual(runtimeEntry({ handler: 'runsc', binaryPath: bootCfg.gvisor.binaryPath, shim: 'runsc', runscConfigPath: '/etc/containerd/runsc.toml' }));
        expect(findRuntime(patched, 'runc')?.runtime_type).toBe('io.containerd.runc.v2');

        const bins = await buildGVisor();
        const res = await installNode(node, bootCfg, bins);
        expect(res.facts.systemd).toBe(true);
        expect(res.changed).toEqual(expect.arrayContaining([`${bootCfg.gvisor.binaryPath}/runsc`, `${bootCfg.gvisor.binaryPath}/containerd-shim-runsc-v1`, `${bootCfg.gvisor.binaryPath}/gvisor-bin/gvisor_sentry`, '/etc/containerd/runsc.toml']));
        // kind's merge already put the handler in config.toml: the installer leaves the file alone
        // (containerd still restarts, for the PATH drop-in that puts binaryPath on its PATH).
        expect(res.changed).not.toContain('/etc/containerd/config.toml');
        expect(await mustExec(node, `${bootCfg.gvisor.binaryPath}/runsc --version`)).toContain(bins.expectedVersion);
        expect((await mustExec(node, 'systemctl is-active containerd')).trim()).toBe('active');
        const installed = (await readNodeFile(node, '/etc/containerd/config.toml'))!;
        expect(installed.startsWith(MANAGED_HEADER)).toBe(false);
        expect(findRuntime(parseToml(installed) as TomlTable, 'runsc')?.runtime_type).toBe('io.containerd.runsc.v1');
        // A second install changes nothing (and so does not restart containerd).
        expect((await installNode(node, bootCfg, bins)).changed).toEqual([]);

        // The test image goes in as `up` loads it: kind load image-archive of the OCI archive.
        const img = await buildTestImage();
        const load = spawnSync(kind, ['load', 'image-archive', img.archive, '--name', booted, '--nodes', `${booted}-worker`], { encoding: 'utf8', env: { ...process.env, DOCKER_HOST: d.host } });
        expect(load.status, load.stderr).toBe(0);
        expect((await mustExec(node, 'ctr -n k8s.io images ls -q')).split('\n')).toEqual(expect.arrayContaining([img.image, img.pause]));
      } finally {
        spawnSync(kind, ['delete', 'cluster', '--name', booted, '--kubeconfig', join(dir, 'kubeconfig')], { env: { ...process.env, DOCKER_HOST: d.host } });
      }
    });

    it('a failed `up` on real nodes exports kind logs into the reports dir, then deletes the cluster', () => {
      const file = writeConfig(dir, 'kind-up-boot.yaml', kindYamlConfig('gve2e-upboot', { nodeImage: image }));
      const r = cli(['-c', file, 'up'], { DOCKER_HOST: d.host });
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toContain('failed to init node with kubeadm');
      const m = /\(kind logs: (\S+)/.exec(r.stderr);
      expect(m, r.stderr).not.toBeNull();
      const logs = m![1]!;
      expect(logs.startsWith(join(reports, 'kind-logs', 'gve2e-upboot-'))).toBe(true);
      for (const n of ['gve2e-upboot-control-plane', 'gve2e-upboot-worker', 'gve2e-upboot-worker2']) {
        expect(readdirSync(join(logs, n)), n).toEqual(expect.arrayContaining(['journal.log', 'containerd.log', 'serial.log']));
      }
      expect(r.stderr).toContain('✔ kind delete cluster "gve2e-upboot"');
      expect(spawnSync('docker', ['-H', d.host, 'ps', '-aq'], { encoding: 'utf8' }).stdout.trim()).toBe('');
      expect(existsSync(join(stateRoot(), 'gve2e-upboot'))).toBe(false);
    });
  });
});
