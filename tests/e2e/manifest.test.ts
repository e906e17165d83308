import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cli, latestSummary, localCluster, scratch, writeConfig, suiteStates, ALL_SUITES_PASSED } from './helpers.ts';

// Reproducing a customer's setup from their manifest: a ContainerRuntime with net-raw "true"
// becomes a local Kubernetes cluster whose gVisor pool, binary path and flags are the manifest's.

const dir = scratch('manifest');
const reports = join(dir, 'reports');
const name = `m${process.pid}`;
const base = writeConfig(dir, 'base.yaml', localCluster(name, reports, { kubernetes: true, pools: [{ name: 'placeholder', kind: 'host' }] }, { gvisor: { pools: ['placeholder'] } }));
const manifest = join(import.meta.dirname, '../../fixtures/manifests/containerruntime.yaml');

afterAll(() => {
  cli(['--config', base, '--manifest', manifest, 'down']);
});

describe('run --manifest', () => {
  it("takes the ContainerRuntime's pool and flags, and every suite passes", () => {
    const r = cli(['--config', base, '--manifest', manifest, 'run', '--keep']);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    const s = latestSummary(reports);
    expect(suiteStates(s)).toEqual(ALL_SUITES_PASSED);
    const names = s.checks.map((c) => `${c.node}: ${c.name}`);
    expect(names).toContain('gvisor-1: runsc.toml sets net-raw = "true"');
    expect(names).toContain('gvisor-1: raw sockets work in the sandbox (net-raw "true")');
    expect(names).toContain('plain-1: (outside the gVisor pools) has no runsc at /var/bin/containerruntimes/runsc');
  });

  it('a malformed manifest is a usage error naming the file and field', () => {
    const bad = join(dir, 'bad.yaml');
    writeConfig(dir, 'bad.yaml', { apiVersion: 'extensions.gardener.cloud/v1alpha1', kind: 'ContainerRuntime', spec: { type: 'gvisor', binaryPath: 'relative', workerPool: { name: 'x' } } });
    const r = cli(['--config', base, '--manifest', bad, 'run']);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain(`${bad}: spec.binaryPath:`);
  });
});
