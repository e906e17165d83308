import { lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { redact } from '../../harness/redact.ts';
import { RunDir } from '../../harness/rundir.ts';

// A run's reports quote nodes' files and errors: sealed, they are redacted (allure-results included,
// which the test workers write unredacted) and readable by their owner only.

const base = mkdtempSync(join(tmpdir(), 'gvisor-e2e-rundir-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));
const mode = (p: string) => (lstatSync(p).mode & 0o777).toString(8);

describe('RunDir', () => {
  it('creates the run directory 0700', () => {
    const run = new RunDir(join(base, 'reports'), 'r1');
    run.create();
    expect(mode(run.dir)).toBe('700');
  });

  it('seal: allure-results redacted, HTML left as Allure wrote it, files 0600 and directories 0700', () => {
    const run = new RunDir(join(base, 'reports'), 'r2');
    run.create();
    mkdirSync(run.allureResults, { mode: 0o755 });
    mkdirSync(run.html, { mode: 0o755 });
    const result = join(run.allureResults, 'x-result.json');
    writeFileSync(result, JSON.stringify({ statusDetails: { message: 'config.toml: password = "reg pass 01"; auth: "dXNlcjpwYXNzMDE="' } }), { mode: 0o644 });
    const html = join(run.html, 'index.html');
    const script = '<script>var a={token:x,b:1};</script>';
    writeFileSync(html, script, { mode: 0o644 });
    writeFileSync(join(run.allureResults, 'a-attachment.png'), Buffer.from([0x89, 0x50, 0x00, 0x01]), { mode: 0o644 });
    run.seal(redact);
    const text = readFileSync(result, 'utf8');
    expect(text).not.toContain('reg pass 01');
    expect(text).not.toContain('dXNlcjpwYXNzMDE');
    expect(JSON.parse(text)).toBeTruthy();
    expect(readFileSync(html, 'utf8')).toBe(script);
    for (const f of [result, html, join(run.allureResults, 'a-attachment.png')]) expect(mode(f), f).toBe('600');
    for (const d of [run.dir, run.allureResults, run.html]) expect(mode(d), d).toBe('700');
  });
});
