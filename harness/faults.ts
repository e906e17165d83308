// Which runtime errors mean "the question could not be asked" (broken) rather than "the node
// answered wrong" (failed): containerd unable to serve a call, a node without room, memory or the
// image. Shared by the CRI client and the Kubernetes side (a kubelet's FailedCreatePodSandBox).

// gRPC status codes (numbers, so this module needs no gRPC): CANCELLED, DEADLINE_EXCEEDED,
// RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE, DATA_LOSS. containerd reports a runtime's own
// refusal (unknown handler, runsc missing or failing) as UNKNOWN.
const INFRASTRUCTURE_CODES = new Set<number>([1, 4, 8, 10, 13, 14, 15]);

const INFRASTRUCTURE_MESSAGE =
  /no space left on device|\bENOSPC\b|disk quota exceeded|too many open files|cannot allocate memory|failed to (?:get|pull|resolve) (?:sandbox )?image|image "[^"]*"[^:]*: not found|not found: image|image not known|no such image/i;

/** Whether a CRI error (or an event quoting one) means "could not ask" rather than the runtime's answer. */
export function criInfrastructureFault(err: { code?: number; details?: string; message?: string }): boolean {
  return (err.code !== undefined && INFRASTRUCTURE_CODES.has(err.code)) || INFRASTRUCTURE_MESSAGE.test(`${err.details ?? ''} ${err.message ?? ''}`);
}
