import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cli, latestSummary, localCluster, scratch, stateRoot, writeConfig, suiteStates, ALL_SUITES_PASSED } from './helpers.ts';

// `repro`: a customer's Shoot plus their node image's image-builder variables become a local
// Kubernetes cluster with the Shoot's worker pools, the runsc flags and image-builder's gVisor
// layout (handler "gvisor", /usr/local/bin); every suite runs, the report's path is printed, and
// the cluster is gone afterwards. Malformed input stops before any cluster exists, with exit 64.

const dir = scratch('repro');
const reports = join(dir, 'reports');
const name = `r${process.pid}`;
// -c only names the cluster, its state dir and the reports dir; pools come from the manifest.
const base = writeConfig(dir, 'base.yaml', localCluster(name, reports, { pools: [{ name: 'placeholder', kind: 'host' }] }, { gvisor: { pools: ['placeholder'] } }));
const shoot = join(import.meta.dirname, '../../fixtures/manifests/shoot.yaml');
const vars = join(import.meta.dirname, '../../fixtures/image-builder/vars.yaml');

afterAll(() => {
  cli(['--config', base, 'down']);
  expect(existsSync(join(stateRoot(), name))).toBe(false);
});

describe('repro', () => {
  it("a Shoot + image-builder variables: the Shoot's pools, image-builder's layout, every suite passes, the report path is printed, nothing is left", () => {
    const r = cli(['--config', base, 'repro', shoot, '--image-builder', vars]);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(r.stderr).toContain('repro of');
    expect(r.stderr).toContain('pools sandboxed (gVisor), default; handler gvisor at /usr/local/bin; configFlags {"net-raw":"false","debug":"true"}');
    const s = latestSummary(reports);
    expect(suiteStates(s)).toEqual(ALL_SUITES_PASSED);
    const names = s.checks.map((c) => `${c.node}: ${c.name}`);
    expect(names).toContain('sandboxed-1: runsc is installed at /usr/local/bin/runsc and executable');
    expect(names).toContain('sandboxed-1: config.toml declares runtime handler "gvisor" (io.containerd.runsc.v1)');
    expect(names).toContain('default-1: (outside the gVisor pools) has no runsc at /usr/local/bin/runsc');
    // containerd_enable_limit_no_file: "true" puts the drop-in on every node, and it is checked there.
    expect(s.checks.filter((c) => c.suite === 'limit-nofile' && c.name.startsWith('the LimitNOFILE drop-in')).map((c) => [c.node, c.state])).toEqual([
      ['sandboxed-1', 'passed'],
      ['default-1', 'passed'],
    ]);
    const printed = r.stdout.trim().split('\n').at(-1)!;
    expect(printed).toBe(`report: ${join(reports, s.runId, 'summary.md')}`);
    expect(readFileSync(printed.slice('report: '.length), 'utf8')).toContain('runtimeclass-scheduling');
    // Removed afterwards (no --keep).
    expect(existsSync(join(stateRoot(), name))).toBe(false);
  });

  it('malformed image-builder variables, or a malformed Shoot: exit 64 naming the file and the field, before any cluster exists', () => {
    const badVars = join(dir, 'bad-vars.yaml');
    writeFileSync(badVars, 'containerd_gvisor_version: "2024-02-12"\ncontainerd_enable_limit_no_file: maybe\n');
    const r = cli(['--config', base, 'repro', shoot, '--image-builder', badVars]);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain(`${badVars}: containerd_gvisor_version: expected "latest" or a release date yyyymmdd, got "2024-02-12"; containerd_enable_limit_no_file: expected true or false`);
    const badShoot = join(dir, 'bad-shoot.yaml');
    writeFileSync(badShoot, readFileSync(shoot, 'utf8').replace(/- type: gvisor/, '- type: kata'));
    const r2 = cli(['--config', base, 'repro', badShoot]);
    expect(r2.code).toBe(64);
    expect(r2.stderr).toContain(`${badShoot}: spec.provider.workers: no worker has a containerRuntimes entry of type "gvisor"`);
    const r3 = cli(['--config', base, 'repro', join(dir, 'missing.yaml')]);
    expect(r3.code).toBe(64);
    expect(r3.stderr).toContain(`${join(dir, 'missing.yaml')}: (root): cannot read the file: ENOENT`);
    expect(existsSync(join(stateRoot(), name))).toBe(false);
  });
});
