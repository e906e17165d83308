import { lstatSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { down, install, up } from '../../bin/app.ts';
import { parseConfig } from '../../clusters/index.ts';
import type { Config, NodeConfig } from '../../harness/config.ts';
import { buildTestImage } from '../../harness/image.ts';
import { openNode, sh, type NodeAccess } from '../../harness/node.ts';
import { ALL_FORMS, kubeconfigText, tomlBlock } from '../unit/fixtures/secrets.ts';
import { expectLocalClusterGone, localCluster, runInstalled, scratch, writeConfig } from './helpers.ts';

// Verdicts and secrets on a real node (a local cluster's host node with containerd 2.x and runsc):
// - an infrastructure fault (the test image missing from containerd) is `broken`, never `failed`;
// - a run in which every check was skipped exits 3, not 0;
// - a node whose config.toml and a kubeconfig-shaped file carry 38 secret forms, then a failing run:
//   no secret in any file under the reports dir or in the terminal, and the run's files are 0600
//   in 0700 directories.

const dir = scratch('verdicts-secrets');
const reports = join(dir, 'reports');
const name = `v${process.pid}`;
const raw = localCluster(name, reports, { pools: [{ name: 'gvisor', nodes: 1, kind: 'host' }] }, { gvisor: { pools: ['gvisor'] } });
const cfgPath = writeConfig(dir, 'config.yaml', raw);
const cfg: Config = parseConfig(JSON.stringify(raw), 'verdicts-secrets test config');
let nodes: NodeConfig[] = [];
let node: NodeAccess;

async function must(cmd: string): Promise<string> {
  const r = await node.exec(cmd);
  if (r.code !== 0) throw new Error(`${cmd}: ${r.stderr}`);
  return r.stdout;
}

beforeAll(async () => {
  nodes = await up(cfg);
  await install(cfg, nodes);
  node = openNode(nodes[0]!);
});

afterAll(async () => {
  await node?.close();
  await down(cfg);
  expectLocalClusterGone(name);
});

describe('verdicts', () => {
  it('the test image missing from containerd: the pods cannot be made, checks are broken (exit 2), never failed', async () => {
    const image = (await buildTestImage()).image;
    await must(`ctr --address /run/containerd/containerd.sock -n k8s.io images rm ${sh(image)}`);
    try {
      const r = runInstalled(cfgPath, reports, ['sandbox-dmesg']);
      const states = r.summary.checks.map((c) => c.state);
      expect(states.filter((s) => s === 'failed'), JSON.stringify(r.summary.checks, null, 2)).toEqual([]);
      expect(states).toContain('broken');
      expect(r.code).toBe(2);
      expect(r.summary.checks.find((c) => c.state === 'broken')!.message).toMatch(/CRI CreateContainer on gvisor-1 could not be served: .*not found/);
      // A broken check learned nothing from the node's files: they are not attached (fewer copies of secrets).
      const results = join(reports, r.summary.runId, 'allure-results');
      const attachmentNames = readdirSync(results)
        .filter((f) => f.endsWith('-result.json'))
        .flatMap((f) => (JSON.parse(readFileSync(join(results, f), 'utf8')) as { attachments?: { name: string }[] }).attachments ?? [])
        .map((x) => x.name);
      expect(attachmentNames.filter((x) => x.includes('config.toml'))).toEqual([]);
    } finally {
      await install(cfg, nodes); // imports the test image again
    }
  });

  it('every check skipped (a suite that needs an API this cluster lacks): exit 3, nothing was checked', () => {
    const r = runInstalled(cfgPath, reports, ['runtimeclass-scheduling']);
    expect(r.summary.checks.map((c) => c.state)).toEqual(['skipped']);
    expect(r.code, r.stderr.slice(-2000)).toBe(3);
  });
});

describe('secrets', () => {
  it('38 secret forms in config.toml and a kubeconfig on the node, a failing run: none in the reports or the terminal; reports 0600/0700', async () => {
    expect(ALL_FORMS.length).toBeGreaterThanOrEqual(30);
    const n = nodes[0]!;
    // config.toml gets a table of registry-style secrets; runsc.toml becomes a kubeconfig full of
    // credentials; runsc loses its execute bit, so checks fail and the node's files are attached.
    await node.exec(`cat >> ${sh(n.paths.containerdConfig)}`, { stdin: tomlBlock() });
    await node.exec(`cat > ${sh(n.paths.runscConfig)}`, { stdin: kubeconfigText() });
    await must(`chmod 0644 ${sh(`${cfg.gvisor.binaryPath}/runsc`)}`);
    expect(await must(`cat ${sh(n.paths.containerdConfig)}`)).toContain('dXNlcjpodW50ZXIyLXJlZ2lzdHJ5MDE');
    const r = runInstalled(cfgPath, reports, ['runsc-installation', 'sandbox-dmesg']);
    expect(r.code, r.stderr.slice(-2000)).toBe(1);
    const runDir = join(reports, r.summary.runId);
    // The node's files were attached (so the secrets were there to leak).
    const attachments = readdirSync(join(runDir, 'allure-results')).filter((f) => f.includes('-attachment'));
    const attached = attachments.map((f) => readFileSync(join(runDir, 'allure-results', f), 'utf8'));
    expect(attached.some((t) => t.includes('[gvisor_e2e_secret_corpus]'))).toBe(true);
    expect(attached.some((t) => t.includes('current-context: c'))).toBe(true);

    const files: string[] = [];
    const walk = (d: string): void => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        const p = join(d, e.name);
        if (e.isDirectory()) {
          walk(p);
          if (p.startsWith(runDir)) expect((lstatSync(p).mode & 0o777).toString(8), p).toBe('700');
        } else if (e.isFile()) {
          files.push(p);
          if (p.startsWith(runDir)) expect((lstatSync(p).mode & 0o777).toString(8), p).toBe('600');
        }
      }
    };
    walk(reports);
    expect((lstatSync(runDir).mode & 0o777).toString(8)).toBe('700');
    expect(files.some((f) => f.endsWith('.html'))).toBe(true);
    const leaks: string[] = [];
    // Allure's single-file HTML embeds results and attachments base64-encoded: decoded, they are searched too.
    const decoded = (text: string) => (text.match(/[A-Za-z0-9+/]{24,}={0,2}/g) ?? []).map((b) => Buffer.from(b, 'base64').toString('latin1')).join('\n');
    const texts = [...files.map((f) => [f, readFileSync(f, 'latin1')] as const), ['stdout', r.stdout] as const, ['stderr', r.stderr] as const];
    for (const [where, text] of texts) {
      const all = `${text}\n${decoded(text)}`;
      for (const form of ALL_FORMS) for (const s of form.secrets) if (all.includes(s)) leaks.push(`${form.name} in ${where}`);
    }
    expect(leaks).toEqual([]);
  });
});
