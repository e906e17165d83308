// Every pinned upstream version lives here, and only here.

/** gvisor.dev/gvisor Go module (its `go` branch as the proxy serves it): runsc and containerd-shim-runsc-v1. */
export const GVISOR_MODULE_VERSION = 'v0.0.0-20260905035102-160fafc42237';
/** k8s.io/cri-api Go module: we load its api.proto to speak CRI over gRPC (crictl is not buildable here). */
export const CRI_API_MODULE_VERSION = 'v0.34.2';
/** The LimitNOFILE value image-builder's drop-in sets. */
export const LIMIT_NOFILE = 1048576;
/** github.com/containerd/containerd/v2 Go module: the containerd test nodes run (the current runsc shim speaks
 *  shim bootstrap protocol v2, which Debian's containerd 1.6 does not understand). */
export const CONTAINERD_MODULE_VERSION = 'v2.2.9';
/** k8s.io/kubernetes: the newest v1.35 the Go module proxy serves that builds with Go 1.26 (its go.mod says go 1.25.0). */
export const KUBERNETES_VERSION = 'v1.35.4';
/** go.etcd.io/etcd/server/v3: the etcd 3.6 line Kubernetes 1.35 pairs with, newest patch served. */
export const ETCD_VERSION = 'v3.6.16';
/** sigs.k8s.io/kind: the kind CLI the kind provider drives (built from its Go module when not on PATH). */
export const KIND_VERSION = 'v0.33.0';
/** The node image kind v0.33.0 itself defaults to, by digest (sigs.k8s.io/kind pkg/apis/config/defaults/image.go):
 *  a published image, so a first `provider: kind` run can pull it. Where nothing can be pulled, `nodeImage: local`
 *  makes a complete node image of KUBERNETES_VERSION here instead (clusters/kind/node-image.ts). */
export const KIND_NODE_IMAGE = 'kindest/node:v1.37.0@sha256:a1ed56cfb0e7b93589bdf97c8cd566405a265939e3620fc4f5de89adff580ae5';
