import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../clusters/index.ts';
import { ConfigError } from '../../harness/errors.ts';
import { loadManifest } from '../../harness/manifests.ts';

// The bad-input corpus: every file under fixtures/bad/{config,manifest} is malformed in one way and
// says, in its first line(s) `# expect: <field path>: <message fragment>`, the error it must give.
// Each must be a ConfigError (exit 64) that names the file, the field path and what was expected.

const BAD = join(import.meta.dirname, 'fixtures', 'bad');

interface Case {
  file: string;
  expected: { path: string; fragment: string }[];
}

function corpus(kind: 'config' | 'manifest'): Case[] {
  const dir = join(BAD, kind);
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .map((f) => {
      const file = join(dir, f);
      const expected = readFileSync(file, 'utf8')
        .split('\n')
        .map((l) => /^# expect: (.*)$/.exec(l)?.[1])
        .filter((x): x is string => x !== undefined)
        .map((e) => {
          // "<path>: <fragment>", where the path itself may be "line 6, column 1" or "(root)".
          const m = /^(\(root\)|line \d+(?:, column \d+)?|[^\s:]+): (.*)$/.exec(e.replaceAll('{dir}', dir));
          if (!m) throw new Error(`${file}: malformed "# expect:" line: ${e}`);
          return { path: m[1] === '(root)' ? '' : m[1]!, fragment: m[2]! };
        });
      return { file, expected };
    });
}

function errorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw new Error(`expected a ConfigError, got ${(e as Error).stack}`);
  }
  throw new Error('expected a ConfigError, the file was accepted');
}

const configs = corpus('config');
const manifests = corpus('manifest');

describe('the corpus itself', () => {
  it('is large and every file states what it expects', () => {
    expect(configs.length).toBeGreaterThanOrEqual(30);
    expect(manifests.length).toBeGreaterThanOrEqual(20);
    for (const c of [...configs, ...manifests]) expect(c.expected.length, c.file).toBeGreaterThan(0);
  });
});

describe.each([
  ['config', configs, loadConfig],
  ['manifest', manifests, loadManifest],
] as const)('malformed %s files', (_kind, cases, load) => {
  it.each(cases.map((c) => [c.file.split('/').pop()!, c] as const))('%s', (_name, c) => {
    const e = errorOf(() => load(c.file));
    // The file is named first, so the message alone tells the user where to look.
    expect(e.source).toBe(c.file);
    expect(e.message.startsWith(`${c.file}: `)).toBe(true);
    for (const x of c.expected) {
      const issue = e.issues.find((i) => i.path === x.path && i.message.includes(x.fragment));
      expect(issue, `${c.file}: expected an issue at "${x.path || '(root)'}" containing "${x.fragment}", got: ${e.message}`).toBeDefined();
      expect(e.message).toContain(`${x.path || '(root)'}: `);
    }
  });
});
