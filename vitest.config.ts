import { defineConfig } from 'vitest/config';
import LongestFirst from './tests/sequencer.ts';

// Tests of the harness itself. Unit tests are pure and fast; e2e tests bring up real clusters
// (namespaced containerd + gVisor nodes, systemd-nspawn nodes, qemu VMs, kind in a private
// dockerd) and run the CLI against them. Each e2e file makes a cluster of its own under its own
// name, and checks for leftovers by that name only, so two files run at once: most of an e2e
// file's time is waiting (sandboxes, the API, a VM under TCG), and one lane alone took 45 min.
// The unit files run first (group 0), then the e2e files (group 1), longest first.
export default defineConfig({
  test: {
    globalSetup: ['tests/global-setup.ts'],
    sequence: { sequencer: LongestFirst },
    projects: [
      { test: { name: 'unit', include: ['tests/unit/**/*.test.ts'] } },
      {
        test: {
          name: 'e2e',
          include: ['tests/e2e/**/*.test.ts'],
          sequence: { groupOrder: 1 },
          maxWorkers: 2,
          pool: 'forks',
          testTimeout: 300_000,
          hookTimeout: 1_200_000,
        },
      },
    ],
  },
});
