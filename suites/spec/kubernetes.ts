// The conformance profile of Kubernetes' RuntimeClass (admission, scheduling, overhead) and of a pod's basic environment, as Kubernetes' own e2e tests and gVisor's state them.

import { rule } from './rule.ts';

// Paths below are in github.com/kubernetes/kubernetes (test/e2e, plugin/pkg/admission) and
// github.com/google/gvisor (test/), checked with the code search.
const K8S = 'kubernetes';
const COMMON_RC = `${K8S} test/e2e/common/node/runtimeclass.go`;
const NODE_RC = `${K8S} test/e2e/node/runtimeclass.go`;
const ADMISSION = `${K8S} plugin/pkg/admission/runtimeclass/admission.go`;
const POD_TEST = `${K8S} test/e2e/common/node/pods.go; test/e2e/common/node/expansion.go`;
const GVISOR_EXEC = 'gvisor pkg/sentry/user/user.go (MaybeAddExecUserHome: HOME from /etc/passwd when unset, for the container and for exec)';

/** A pod naming a RuntimeClass that does not exist is refused when it is created (Forbidden), never stored. */
export const missingRuntimeClassRejected = rule(`${COMMON_RC} ("should reject a Pod requesting a non-existent RuntimeClass": IsForbidden); ${ADMISSION} (Validate)`, () => ({ status: 403 }));

/** A RuntimeClass whose handler no node's runtime serves: the kubelet reports FailedCreatePodSandBox and the pod never runs. */
export const unservedHandler = rule(`${COMMON_RC} ("should reject a Pod requesting a RuntimeClass with an unconfigured handler": event FailedCreatePodSandBox)`, () => ({ reason: 'FailedCreatePodSandBox', neverPhases: ['Running', 'Succeeded'] }));

/** Admission copies the RuntimeClass's overhead into spec.overhead of each pod that names it. */
export const overheadCopied = rule(`${COMMON_RC} ("should schedule a Pod requesting a RuntimeClass and initialize its Overhead"); ${ADMISSION} (setOverhead)`, (overhead: Record<string, string> | undefined) => overhead ?? {});

/** Admission merges the RuntimeClass's tolerations into the pod; with them the pod may land on the tainted pool. */
export const tolerationsMerged = rule(`${NODE_RC} ("should run a Pod requesting a RuntimeClass with scheduling with taints"); ${ADMISSION} (setScheduling)`, () => ({ effects: ['NoSchedule', 'NoExecute'] }));

/** A pod whose own nodeSelector sets a key of the RuntimeClass's selector to another value is refused at admission ("conflict"). */
export const conflictingSelectorRejected = rule(`${ADMISSION} (setScheduling: "conflict: runtimeClass.scheduling.nodeSelector")`, () => ({ status: 403, says: 'conflict' }));

/** What a container prints on its stdout is its log, read back through the runtime (kubelet logs / CRI log file). */
export const logReadBack = rule(`${POD_TEST} ("should be possible to read a container's log"); gvisor test/kubernetes (busybox echo)`, (text: string) => `${text}\n`);

/** A pod's IP answers another pod (the cluster network reaches into the sandbox's network stack). */
export const podIpAnswers = rule(`${K8S} test/e2e/common/network/networking.go ("should function for intra-pod communication")`, () => true);

/** Every container gets /etc/hosts and /etc/resolv.conf from its pod. */
export const podNetworkFiles = rule(`${K8S} test/e2e/common/node/kubelet_etc_hosts.go; test/e2e/network/dns.go`, () => ['/etc/hosts', '/etc/resolv.conf']);

/** Without HOME in the image or the pod, a root container's HOME is root's home from /etc/passwd, in its main process and in an exec. */
export const homeOfRoot = rule(`${POD_TEST}; ${GVISOR_EXEC}`, () => '/root');

export interface Taint {
  key: string;
  value?: string;
  effect: string;
}
export interface Toleration {
  key?: string;
  operator?: string;
  value?: string;
  effect?: string;
}

/** Whether a toleration tolerates a taint (Kubernetes' ToleratesTaint: key, Exists/Equal value, effect; an empty key with Exists matches all). */
export const tolerates = rule(`${K8S} pkg/apis/core/v1/helper/helpers.go (ToleratesTaint); staging/src/k8s.io/api/core/v1/toleration.go`, (t: Toleration, taint: Taint): boolean => {
  if (t.effect && t.effect !== taint.effect) return false;
  if ((t.operator ?? 'Equal') === 'Exists') return !t.key || t.key === taint.key;
  return t.key === taint.key && (t.value ?? '') === (taint.value ?? '');
});
