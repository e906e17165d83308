// What every suite file works with: the harness's SuiteContext, answered from the conformance spec
// (suites/spec), and `check` that names the upstream source of the rule that failed.
import { check as fail, SuiteContext as HarnessSuiteContext } from '../harness/suite.ts';
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
