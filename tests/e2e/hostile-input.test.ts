import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { HOSTILE_NAMES, HOSTILE_PATHS } from '../unit/fixtures/hostile.ts';
import { cli, localCluster, scratch, stateRoot, writeConfig } from './helpers.ts';

// Hostile names and paths through the real CLI, the three ways a user feeds it input: a config
// (-c), a customer's manifest (--manifest) and `repro` (a manifest, image-builder variables).
// Each must exit 64 with a message naming the file and the field, before anything exists: no
// state dir, no reports dir, and none of the injected commands ran (no /tmp/pwned).

const PWNED = '/tmp/pwned';
const dir = scratch('hostile');
const reports = join(dir, 'reports');
const name = `h${process.pid}`;
const CR = readFileSync(join(import.meta.dirname, '../../fixtures/manifests/containerruntime.yaml'), 'utf8');
const good = localCluster(name, reports, { pools: [{ name: 'gvisor', kind: 'host' }, { name: 'plain', kind: 'host' }], kubernetes: true }, { gvisor: { pools: ['gvisor'] } });
const base = writeConfig(dir, 'base.yaml', good);
let n = 0;

function file(body: string): string {
  const p = join(dir, `input-${++n}.yaml`);
  writeFileSync(p, body);
  return p;
}

/** Exit 64, the file and the field named on stderr, and nothing made. */
function refused(args: string[], source: string, field: string): void {
  const r = cli(args);
  expect(r.code, r.stderr.slice(-2000)).toBe(64);
  expect(r.stderr).toContain(`${source}: `);
  expect(r.stderr).toMatch(new RegExp(`${source.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: (.*; )?${field.replace(/[.[\]]/g, '\\$&')}: `));
  expect(existsSync(join(stateRoot(), name)), 'state dir').toBe(false);
  expect(existsSync(reports), 'reports dir').toBe(false);
  expect(existsSync(PWNED), PWNED).toBe(false);
}

beforeAll(() => {
  // Not ours to remove: if it is there, the test cannot tell, and says so.
  if (existsSync(PWNED)) throw new Error(`${PWNED} exists before the test; remove it to run this test`);
});
afterAll(() => {
  expect(readdirSync(dir).filter((f) => f !== 'base.yaml' && !f.startsWith('input-'))).toEqual([]);
});

const cases = (vs: string[]) => vs.map((v) => [JSON.stringify(v).slice(0, 40), v] as const);

describe('hostile names', () => {
  it.each(cases(HOSTILE_NAMES))('%s: as a pool name in a config, a ContainerRuntime through --manifest and repro', (_t, v) => {
    const cfg = structuredClone(good);
    cfg.cluster.pools[0] = { name: v, kind: 'host' };
    cfg.gvisor.pools = [v];
    const c = file(stringify(cfg));
    refused(['-c', c, 'run'], c, 'cluster.pools[0].name');
    const cr = file(CR.replace('    name: gvisor\n', `    name: ${JSON.stringify(v)}\n`));
    refused(['-c', base, '--manifest', cr, 'run'], cr, 'spec.workerPool.name');
    refused(['-c', base, 'repro', cr], cr, 'spec.workerPool.name');
  });
});

describe('hostile paths', () => {
  it.each(cases(HOSTILE_PATHS))('%s: as binaryPath in a config and in a ContainerRuntime through repro', (_t, v) => {
    const cfg = structuredClone(good) as typeof good & { gvisor: { binaryPath?: string } };
    cfg.gvisor.binaryPath = v;
    const c = file(stringify(cfg));
    refused(['-c', c, 'run'], c, 'gvisor.binaryPath');
    const cr = file(CR.replace('binaryPath: /var/bin/containerruntimes', `binaryPath: ${JSON.stringify(v)}`));
    refused(['-c', base, 'repro', cr], cr, 'spec.binaryPath');
  });

  it('image-builder variables through repro: a command in the version', () => {
    const cr = file(CR);
    const vars = file(stringify({ containerd_gvisor_runtime: 'true', containerd_gvisor_version: `$(touch ${PWNED})` }));
    refused(['-c', base, 'repro', cr, '--image-builder', vars], vars, 'containerd_gvisor_version');
  });
});
