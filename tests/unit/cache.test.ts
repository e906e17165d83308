import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { renameIntoCache } from '../../harness/binaries.ts';

let root = '';
afterEach(() => rmSync(root, { recursive: true, force: true }));

/** A finished build dir holding `bin` with `content`. */
function built(name: string, content: string): string {
  const d = join(root, name);
  mkdirSync(d);
  writeFileSync(join(d, 'bin'), content);
  return d;
}

describe('renameIntoCache', () => {
  it('replaces an incomplete entry (an interrupted older build) with the new build', () => {
    root = mkdtempSync(join(tmpdir(), 'cache-test-'));
    const dir = join(root, 'entry');
    mkdirSync(dir);
    writeFileSync(join(dir, 'half'), '');
    const out = built('out', 'new');
    renameIntoCache(out, dir, () => existsSync(join(dir, 'bin')));
    expect(readFileSync(join(dir, 'bin'), 'utf8')).toBe('new');
    expect(existsSync(join(dir, 'half'))).toBe(false);
    expect(existsSync(out)).toBe(false);
  });

  it("keeps a complete entry another process finished meanwhile, and leaves this build's dir to the caller", () => {
    root = mkdtempSync(join(tmpdir(), 'cache-test-'));
    const dir = built('entry', 'theirs');
    const out = built('out', 'ours');
    renameIntoCache(out, dir, () => existsSync(join(dir, 'bin')));
    expect(readFileSync(join(dir, 'bin'), 'utf8')).toBe('theirs');
    expect(existsSync(out)).toBe(true);
  });
});
