import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../clusters/index.ts';
import { ConfigError } from '../../harness/errors.ts';
import { parseManifest } from '../../harness/manifests.ts';
import { shCommand, shQuote } from '../../harness/shell.ts';
import { HOSTILE_NAMES, HOSTILE_PATHS } from './fixtures/hostile.ts';

// Names and paths from a config or a customer's manifest end up in commands run as root. Each
// hostile value below must be refused at parse time (a ConfigError: exit 64) naming the field, and
// the quoting helper must carry any of them through a shell as one inert word.

const ROOT = join(import.meta.dirname, '../..');
const LOCAL = parse(readFileSync(join(ROOT, 'fixtures/local.yaml'), 'utf8')) as Record<string, any>;
const CR = readFileSync(join(ROOT, 'fixtures/manifests/containerruntime.yaml'), 'utf8');
const SHOOT = readFileSync(join(ROOT, 'fixtures/manifests/shoot.yaml'), 'utf8');

function issuesOf(fn: () => unknown): { path: string; message: string }[] {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e.issues;
    throw e;
  }
  throw new Error('accepted');
}

/** A config variant: `edit` changes a deep copy of the shipped local fixture. */
function config(edit: (c: Record<string, any>) => void): string {
  const c = structuredClone(LOCAL);
  edit(c);
  return stringify(c);
}

const NODES = (node: object) => ({
  apiVersion: 'gvisor-e2e.dev/v1alpha1',
  kind: 'Config',
  cluster: { provider: 'nodes', nodes: [{ name: 'worker-1', pool: 'gvisor', access: { type: 'local' }, ...node }] },
  gvisor: { pools: ['gvisor'] },
});

describe('hostile names are refused at parse time, naming the field', () => {
  describe.each(HOSTILE_NAMES.map((v) => [JSON.stringify(v).slice(0, 40), v] as const))('%s', (_t, v) => {
    it('a local pool name (and the gVisor pool naming it)', () => {
      const issues = issuesOf(() => parseConfig(config((c) => ((c.cluster.pools[0].name = v), (c.gvisor.pools = [v]))), 'c.yaml'));
      expect(issues.map((i) => i.path)).toEqual(expect.arrayContaining(['cluster.pools[0].name', 'gvisor.pools[0]']));
      expect(issues.find((i) => i.path === 'gvisor.pools[0]')!.message).toContain('expected a DNS-1123 label');
    });
    it("a node's name and pool (provider nodes)", () => {
      expect(issuesOf(() => parseConfig(stringify(NODES({ name: v })), 'c.yaml')).map((i) => i.path)).toContain('cluster.nodes[0].name');
      expect(issuesOf(() => parseConfig(stringify(NODES({ pool: v })), 'c.yaml')).map((i) => i.path)).toContain('cluster.nodes[0].pool');
    });
    it("a ContainerRuntime's workerPool.name and a Shoot's worker name", () => {
      expect(issuesOf(() => parseManifest(CR.replace('    name: gvisor\n', `    name: ${JSON.stringify(v)}\n`), 'cr.yaml')).map((i) => i.path)).toEqual(['spec.workerPool.name']);
      expect(issuesOf(() => parseManifest(SHOOT.replace('- name: sandboxed', `- name: ${JSON.stringify(v)}`), 'shoot.yaml')).map((i) => i.path)).toEqual(['spec.provider.workers[0].name']);
    });
  });
});

describe('hostile paths are refused at parse time, naming the field', () => {
  describe.each(HOSTILE_PATHS.map((v) => [JSON.stringify(v).slice(0, 40), v] as const))('%s', (_t, v) => {
    it('gvisor.binaryPath and a node path', () => {
      expect(issuesOf(() => parseConfig(config((c) => (c.gvisor.binaryPath = v)), 'c.yaml')).map((i) => i.path)).toEqual(['gvisor.binaryPath']);
      expect(issuesOf(() => parseConfig(stringify(NODES({ paths: { podLogDir: v } })), 'c.yaml')).map((i) => i.path)).toEqual(['cluster.nodes[0].paths.podLogDir']);
    });
    it("a ContainerRuntime's binaryPath", () => {
      expect(issuesOf(() => parseManifest(CR.replace('binaryPath: /var/bin/containerruntimes', `binaryPath: ${JSON.stringify(v)}`), 'cr.yaml')).map((i) => i.path)).toEqual(['spec.binaryPath']);
    });
    it("the local cluster's stateDir (a path of this machine, used in its nodes' commands)", () => {
      if (v.includes('..')) return; // a relative config path may climb; it is resolved before use
      expect(issuesOf(() => parseConfig(config((c) => (c.cluster.stateDir = v)), 'c.yaml')).map((i) => i.path)).toEqual(['cluster.stateDir']);
    });
  });

  it('names what is wrong, with the value JSON-escaped (a newline shows as \\n)', () => {
    const [issue] = issuesOf(() => parseConfig(config((c) => (c.gvisor.binaryPath = '/usr/bin\nExecStartPre=/x')), 'c.yaml'));
    expect(issue!.message).toBe('may contain only letters, digits and . _ - + @ / (no spaces, quotes, newlines or shell characters), got "/usr/bin\\nExecStartPre=/x"');
    expect(issuesOf(() => parseConfig(config((c) => (c.gvisor.binaryPath = '/var/../etc')), 'c.yaml'))[0]!.message).toBe('must not contain ".." segments, got "/var/../etc"');
  });

  it('good names and paths still load', () => {
    expect(() => parseConfig(config((c) => ((c.gvisor.binaryPath = '/usr/local/bin'), (c.cluster.stateDir = '../state/x_1.d'))), 'c.yaml')).not.toThrow();
  });
});

describe('shQuote: every hostile value is one inert word in a real shell', () => {
  it.each([...HOSTILE_NAMES, ...HOSTILE_PATHS, '', "''", '\\', '-n', '*'].map((v) => [JSON.stringify(v).slice(0, 40), v] as const))('%s', (_t, v) => {
    const out = execFileSync('sh', ['-c', `printf '%s|' ${shQuote(v)} ${shCommand([v, v])}`], { encoding: 'utf8' });
    expect(out).toBe(`${v}|${v}|${v}|`);
  });

  it('JSON.stringify is not shell quoting (why nothing builds commands with it)', () => {
    const out = execFileSync('sh', ['-c', `printf '%s' ${JSON.stringify('$(echo expanded)')}`], { encoding: 'utf8' });
    expect(out).toBe('expanded');
  });

  it('no harness, cluster or suite source quotes a shell word with JSON.stringify', () => {
    const offenders: string[] = [];
    const walk = (dir: string): void => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const p = join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (p.endsWith('.ts')) {
          readFileSync(p, 'utf8')
            .split('\n')
            .forEach((l, i) => {
              // A command template (exec / sh / inNode …) that interpolates JSON.stringify(…).
              if (/(exec|[sS]ync|inNode|sh)\(`[^`]*\$\{JSON\.stringify\(/.test(l)) offenders.push(`${p}:${i + 1}`);
            });
        }
      }
    };
    for (const d of ['harness', 'clusters', 'suites', 'bin']) walk(join(ROOT, d));
    expect(offenders).toEqual([]);
  });
});
