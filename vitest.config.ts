import { defineConfig } from 'vitest/config';

// Tests of the harness itself. Unit tests are pure and fast; e2e tests bring up a real local
// cluster (namespaced containerd + gVisor node, systemd-nspawn node) and run the CLI against it,
// one file at a time because they share that cluster.
export default defineConfig({
  test: {
    globalSetup: ['tests/global-setup.ts'],
    projects: [
      { test: { name: 'unit', include: ['tests/unit/**/*.test.ts'] } },
      {
        test: {
          name: 'e2e',
          include: ['tests/e2e/**/*.test.ts'],
          fileParallelism: false,
          pool: 'forks',
          testTimeout: 300_000,
          hookTimeout: 1_200_000,
        },
      },
    ],
  },
});
