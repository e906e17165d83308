// doctor's checks of this machine: a command on PATH, a file a package installs.
import { existsSync } from 'node:fs';
import { which } from '../../harness/process.ts';
import type { Finding } from '../provider.ts';

export { which };

export function tool(bin: string, pkg: string, why: string): Finding {
  const at = which(bin);
  return { check: `${bin} (${why})`, ok: Boolean(at), detail: at ?? 'not found', fix: at ? undefined : `apt-get install -y ${pkg}` };
}

export function file(path: string, pkg: string, why: string): Finding {
  const ok = existsSync(path);
  return { check: `${path} (${why})`, ok, detail: ok ? 'present' : 'missing', fix: ok ? undefined : `apt-get install -y ${pkg}` };
}
