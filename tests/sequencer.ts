import { relative } from 'node:path';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

// The e2e files run two at a time (each brings up a cluster of its own, named apart). On a clean
// clone vitest has no durations yet and would start the largest files first; this starts the
// longest first instead (measured, seconds, on a 2-core machine), so the two lanes end together:
// the two-VM test alone is a third of the sequential time. Unknown files keep vitest's order, after.
const LONGEST_FIRST = [
  'tests/e2e/vm.test.ts', // 815
  'tests/e2e/conformance.test.ts', // 250
  'tests/e2e/kind.test.ts', // 250
  'tests/e2e/node-suites.test.ts', // 180
  'tests/e2e/release.test.ts', // 170
  'tests/e2e/kube.test.ts', // 130
  'tests/e2e/fault-matrix.test.ts', // 125
  'tests/e2e/faults.test.ts', // 110
  'tests/e2e/existing.test.ts', // 100
];

export default class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const rank = (f: TestSpecification) => {
      const i = LONGEST_FIRST.indexOf(relative(f.project.config.root, f.moduleId));
      return i < 0 ? LONGEST_FIRST.length : i;
    };
    // Array sort is stable: files of equal rank keep the order vitest gave them.
    return sorted.sort((a, b) => a.project.config.sequence.groupOrder - b.project.config.sequence.groupOrder || rank(a) - rank(b));
  }
}
