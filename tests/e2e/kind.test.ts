import { spawnSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { renderKindConfig } from '../../clusters/kind/config.ts';
import { kindBinary } from '../../clusters/kind/index.ts';
import { type Config, type KindCluster, parseConfig } from '../../harness/config.ts';
import { KIND_NODE_IMAGE } from '../../harness/versions.ts';
import { dockerdAvailable, groupEmpty, startPrivateDockerd, type PrivateDockerd } from './dockerd.ts';
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

function kindYamlConfig(name: string): object {
  return {
    apiVersion: 'gvisor-e2e.dev/v1alpha1',
    kind: 'Config',
    cluster: { provider: 'kind', name, stateDir: join(stateRoot(), name), wait: '1m', pools: [{ name: 'gvisor', nodes: 1 }, { name: 'plain', nodes: 1 }] },
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
  function kindCreate(configText: string, env: NodeJS.ProcessEnv = { DOCKER_HOST: d.host }) {
    const file = join(dir, `kind-${Math.random().toString(36).slice(2, 8)}.yaml`);
    writeFileSync(file, configText);
    const r = spawnSync(kind, ['create', 'cluster', '--name', name, '--config', file, '--kubeconfig', join(dir, 'kubeconfig'), '--retain'], {
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
  });

  afterAll(async () => {
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
});
