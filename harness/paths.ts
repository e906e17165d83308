import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The project's root directory (where suites/, node_modules/ live). */
export const ROOT_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..');
