// The three ways a run can go wrong, kept apart because they map to different exit codes
// and different report states: bad input (the user's file or flags), broken infrastructure
// (we could not ask the question), and a failed check (we asked, the product answered wrong).

/** Bad input: a config file, manifest or CLI argument. Names the source, the field and what was expected. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly source: string,
    readonly issues: { path: string; message: string }[],
  ) {
    super(`${source}: ${issues.map((i) => `${i.path || '(root)'}: ${i.message}`).join('; ')}`);
  }
}

/** The harness or the infrastructure broke (SSH refused, CRI unreachable, timeout waiting for a daemon). */
export class InfrastructureError extends Error {
  override readonly name = 'InfrastructureError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** A wait that ran out. The message always names what was awaited, so a log line alone explains it. */
export class TimeoutError extends InfrastructureError {
  constructor(what: string, ms: number) {
    super(`timed out after ${(ms / 1000).toFixed(1)}s waiting for ${what}`);
  }
}

export const ExitCode = {
  Passed: 0,
  /** At least one check failed: the node is not configured as expected. */
  Failed: 1,
  /** The harness or infrastructure broke; the result says nothing about the product. */
  Broken: 2,
  /** Nothing was checked: every check was skipped (no SSH access, a capability missing, all filtered out). */
  NothingChecked: 3,
  /** Bad configuration or arguments (EX_USAGE). */
  Usage: 64,
} as const;

export function isInfrastructureError(e: unknown): boolean {
  return e instanceof Error && (e.name === 'InfrastructureError' || e instanceof InfrastructureError);
}
