// What every suite file works with: the harness's SuiteContext, answered from the conformance spec
// (suites/spec), and `check` that names the upstream source of the rule that failed.
import type { TestContext } from 'vitest';
import { redact } from '../harness/redact.ts';
import { check as fail, SuiteContext as HarnessSuiteContext, WARNING_ANNOTATION } from '../harness/suite.ts';
import { cite, expectedNetRaw, gardener } from './spec/index.ts';

export { recordPod, warn } from '../harness/suite.ts';

export class SuiteContext extends HarnessSuiteContext {
  protected onGVisorPool(pool: string): boolean {
    return gardener.gvisorOnPool(this.gvisor.pools, pool);
  }
  /** net-raw as the spec expects it for the configured configFlags (gardener.runscFlags). */
  get netRaw(): 'true' | 'false' {
    return expectedNetRaw(this.config);
  }
}

/** Fails the check with `message`; with a spec rule, the message also names where upstream states it. */
export function check(ok: unknown, message: string, rule?: { source: string }): asserts ok {
  fail(ok, rule ? `${message}${cite(rule)}` : message);
}

/**
 * Warns in the report from the check whose context is `t` (the check passes). Checks of several
 * nodes run concurrently, so "the current test" need not be this one: the warning goes to `t`.
 */
export async function warnOn(t: TestContext, message: string): Promise<void> {
  await t.annotate(redact(message), WARNING_ANNOTATION);
}
