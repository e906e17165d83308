// The conformance profile of gVisor's life on a pool: removed and added back, as gardener-extension-runtime-gvisor's own integration test does it.

import { rule } from './rule.ts';

const REPO = 'gardener-extension-runtime-gvisor';
const INTEGRATION_TEST = `${REPO} test/integration/container-runtime/container_runtime.go ("should add, remove and upgrade worker pool with gVisor": removeGVisorFromWorker, addGVisorToWorker)`;
const INSTALL_SCRIPT = `${REPO} charts/internal/gvisor-installation/templates/configmap-containerd.yaml`;
const HARNESS = 'gvisor-e2e README.md (lifecycle: what a pool without gVisor keeps is its own statement; the extension test only waits for the Shoot to reconcile)';

/** After removal the pool's nodes keep no runsc, shim, runsc.toml, runtime handler or gVisor label; after re-adding they have all of it again. */
export const removedFromPool = rule(`${INTEGRATION_TEST}; ${HARNESS}`, () => true);

/** containerd restarts only when its config changed, and a restart leaves running containers alone: a runc pod keeps running. */
export const runcPodsKeepRunning = rule(`${INSTALL_SCRIPT} (RESTART_CONTAINERD only when config.toml or runsc.toml changed); containerd docs (shims outlive a daemon restart)`, () => true);

/** An install with nothing changed writes nothing and restarts nothing (the install script diffs each binary and config first). */
export const idempotent = rule(`${INSTALL_SCRIPT} ("gVisor binary up to date.", "Containerd already configured for gvisor.")`, () => true);
