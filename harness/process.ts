// The one way the harness runs a command on this machine and waits for it (daemons it starts and
// node access have their own homes): argv, not a shell, unless asked; a timeout that kills; the
// command's own words in every failure.
import { execFile, execFileSync } from 'node:child_process';
import { InfrastructureError } from './errors.ts';

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface CommandOptions {
  timeoutMs?: number;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

/** Runs argv[0] with argv[1..] and returns its exit code and output; never throws for a non-zero exit. */
export function runCommand(argv: string[], opts: CommandOptions = {}): Promise<CommandResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  return new Promise((res) => {
    execFile(argv[0]!, argv.slice(1), { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 64 * 1024 * 1024, cwd: opts.cwd, env: opts.env }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string; killed?: boolean }) | null;
      const code = !e ? 0 : typeof e.code === 'number' ? e.code : 127;
      const why = e && e.killed ? `\n(killed after ${timeoutMs / 1000}s)` : e && typeof e.code === 'string' ? `\n${e.message}` : '';
      res({ code, stdout: String(stdout), stderr: String(stderr) + why });
    });
  });
}

/** Like runCommand, but a non-zero exit is an InfrastructureError naming the command and its own words. */
export async function mustRunCommand(argv: string[], opts: CommandOptions = {}): Promise<string> {
  const r = await runCommand(argv, opts);
  if (r.code !== 0) {
    const detail = [r.stderr, r.stdout].filter((x) => x.trim()).join('\n') || `exit ${r.code}`;
    throw new InfrastructureError(`${argv.slice(0, 3).join(' ')} failed (exit ${r.code}): ${detail.slice(-2000)}`);
  }
  return r.stdout;
}

/** Runs argv synchronously (short local tools: openssl, ssh-keygen); throws with its stderr on failure. */
export function runSync(argv: string[], opts: { input?: string; maxBuffer?: number } = {}): string {
  return execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8', input: opts.input, stdio: ['pipe', 'pipe', 'pipe'], maxBuffer: opts.maxBuffer });
}

/** Runs a shell command line synchronously (ip, mount, nsenter plumbing); throws with its stderr on failure. */
export function shSync(cmd: string, opts: { input?: string } = {}): string {
  return runSync(['/bin/sh', '-c', cmd], opts);
}

/** Where a command is on this machine's PATH, or undefined. */
export function which(bin: string): string | undefined {
  try {
    return shSync(`command -v ${bin}`).trim() || undefined;
  } catch {
    return undefined;
  }
}
