// Bootstrap credentials for kubelets that join over the network, as kubeadm makes them: a bootstrap
// token (a Secret in kube-system, short-lived, one per join), the RBAC that lets its group ask for
// a node client certificate and has the controller-manager approve it, and approval of the
// kubelets' own renewals. The kubelet then holds a certificate of its own and the token is deleted.
// Sources: kubernetes cmd/kubeadm/app/phases/bootstraptoken/node/{token,tlsbootstrap}.go,
// staging/src/k8s.io/cluster-bootstrap/token/api/types.go.
import { randomBytes } from 'node:crypto';
import type * as k8s from '@kubernetes/client-node';

/** The extra group the tokens carry (kubeadm's is system:bootstrappers:kubeadm:default-node-token). */
export const BOOTSTRAP_GROUP = 'system:bootstrappers:gvisor-e2e';
const TOKEN_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

export interface BootstrapToken {
  id: string;
  secret: string;
  /** `<id>.<secret>`: what the kubelet presents. */
  token: string;
  expires: Date;
}

function randomToken(n: number): string {
  // Rejection sampling keeps every character equally likely (256 is not a multiple of 36).
  let out = '';
  while (out.length < n) for (const b of randomBytes(n * 2)) if (b < 252 && out.length < n) out += TOKEN_ALPHABET[b % 36];
  return out;
}

/** A fresh token ([a-z0-9]{6}.[a-z0-9]{16}, as the bootstrap-token format requires) valid for ttlMs. */
export function newBootstrapToken(ttlMs: number, now = new Date()): BootstrapToken {
  const id = randomToken(6);
  const secret = randomToken(16);
  return { id, secret, token: `${id}.${secret}`, expires: new Date(now.getTime() + ttlMs) };
}

/** The token's Secret, as the API server's bootstrap authenticator reads it. */
export function bootstrapTokenSecret(t: BootstrapToken, cluster: string): k8s.V1Secret {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: `bootstrap-token-${t.id}`, namespace: 'kube-system', labels: { 'app.kubernetes.io/managed-by': 'gvisor-e2e' } },
    type: 'bootstrap.kubernetes.io/token',
    stringData: {
      description: `gvisor-e2e: kubelets of cluster ${cluster} joining`,
      'token-id': t.id,
      'token-secret': t.secret,
      expiration: t.expires.toISOString().replace(/\.\d+Z$/, 'Z'),
      'usage-bootstrap-authentication': 'true',
      'auth-extra-groups': BOOTSTRAP_GROUP,
    },
  };
}

/** kubeadm's three bindings: bootstrappers may create CSRs, theirs are approved, and so are nodes' renewals. */
export function bootstrapRbac(): k8s.V1ClusterRoleBinding[] {
  const binding = (name: string, role: string, group: string): k8s.V1ClusterRoleBinding => ({
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'ClusterRoleBinding',
    metadata: { name, labels: { 'app.kubernetes.io/managed-by': 'gvisor-e2e' } },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: role },
    subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'Group', name: group }],
  });
  return [
    binding('gvisor-e2e:kubelet-bootstrap', 'system:node-bootstrapper', BOOTSTRAP_GROUP),
    binding('gvisor-e2e:node-autoapprove-bootstrap', 'system:certificates.k8s.io:certificatesigningrequests:nodeclient', BOOTSTRAP_GROUP),
    binding('gvisor-e2e:node-autoapprove-certificate-rotation', 'system:certificates.k8s.io:certificatesigningrequests:selfnodeclient', 'system:nodes'),
  ];
}

/** A kubeconfig that authenticates with the bootstrap token (it holds a secret: 0600 wherever it lands). */
export function bootstrapKubeconfig(server: string, caPem: string, token: string): string {
  const ca = Buffer.from(caPem).toString('base64');
  return `apiVersion: v1
kind: Config
clusters:
- name: cluster
  cluster:
    server: ${server}
    certificate-authority-data: ${ca}
users:
- name: kubelet-bootstrap
  user:
    token: ${token}
contexts:
- name: bootstrap
  context:
    cluster: cluster
    user: kubelet-bootstrap
current-context: bootstrap
`;
}

/** Makes the RBAC (once) and a new token; the caller deletes the token once its kubelets have joined. */
export async function issueBootstrapToken(kubeconfig: string, cluster: string, ttlMs: number): Promise<BootstrapToken> {
  const k8s = await import('@kubernetes/client-node');
  const { api, kubeConfig } = await import('../../harness/kube.ts');
  const kc = kubeConfig(kubeconfig);
  const rbac = kc.makeApiClient(k8s.RbacAuthorizationV1Api);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  for (const b of bootstrapRbac()) {
    // Already there from an earlier `up` of this cluster (the control plane is the harness's own).
    await api(`create ClusterRoleBinding ${b.metadata!.name}`, () => rbac.createClusterRoleBinding({ body: b }).catch((e: { code?: number }) => (e.code === 409 ? undefined : Promise.reject(e))));
  }
  const t = newBootstrapToken(ttlMs);
  await api(`create bootstrap token ${t.id}`, () => core.createNamespacedSecret({ namespace: 'kube-system', body: bootstrapTokenSecret(t, cluster) }));
  return t;
}

/** Deletes the harness's bootstrap tokens (all of them: a crashed `up` may have left one); returns their ids. */
export async function revokeBootstrapTokens(kubeconfig: string): Promise<string[]> {
  const k8s = await import('@kubernetes/client-node');
  const { api, kubeConfig } = await import('../../harness/kube.ts');
  const core = kubeConfig(kubeconfig).makeApiClient(k8s.CoreV1Api);
  const list = await api('list bootstrap tokens', () => core.listNamespacedSecret({ namespace: 'kube-system', fieldSelector: 'type=bootstrap.kubernetes.io/token', labelSelector: 'app.kubernetes.io/managed-by=gvisor-e2e' }));
  const ids: string[] = [];
  for (const s of list.items) {
    await api(`delete ${s.metadata!.name}`, () => core.deleteNamespacedSecret({ name: s.metadata!.name!, namespace: 'kube-system' }).catch((e: { code?: number }) => (e.code === 404 ? undefined : Promise.reject(e))));
    ids.push(s.metadata!.name!.replace(/^bootstrap-token-/, ''));
  }
  return ids;
}
