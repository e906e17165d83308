// Where the harness's own files are: its code (the repository, or dist/ when built) and the package.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The code's root directory (where suites/ lives): the repository from source, dist/ when built. */
export const ROOT_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** The package's directory (package.json, fixtures/, reports/summary.schema.json): ROOT_DIR, or the one above dist/. */
export const PACKAGE_DIR = existsSync(join(ROOT_DIR, 'package.json')) ? ROOT_DIR : dirname(ROOT_DIR);

/**
 * An npm package's executable as node_modules/.bin has it, looked up the way Node resolves
 * packages (from the package's own directory upwards): an installed gvisor-e2e shares its
 * dependencies' node_modules with the project that installed it.
 */
export function packageBin(name: string): string {
  for (let d = PACKAGE_DIR; ; d = dirname(d)) {
    const p = join(d, 'node_modules', '.bin', name);
    if (existsSync(p)) return p;
    if (dirname(d) === d) return join(PACKAGE_DIR, 'node_modules', '.bin', name);
  }
}
