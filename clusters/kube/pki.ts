import { runSync } from '../../harness/process.ts';
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';

// Certificates for a throwaway cluster, made with the openssl CLI the way Kubernetes'
// local-up-cluster.sh does (Node has no X.509 issuing API, and openssl is on every node image).
// Keys are 0600; everything lives in the cluster's state directory and goes with `down`.

export interface Cert {
  crt: string;
  key: string;
}

function openssl(args: string[], input?: string): string {
  return runSync(['openssl', ...args], { input });
}

export class Pki {
  readonly ca: Cert;
  /** `caName`: the CA's common name (etcd has a CA of its own, so no Kubernetes certificate opens it). */
  constructor(
    readonly dir: string,
    caName = 'gvisor-e2e-ca',
  ) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.ca = { crt: join(dir, 'ca.crt'), key: join(dir, 'ca.key') };
    if (!existsSync(this.ca.crt)) {
      openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', this.ca.key, '-out', this.ca.crt, '-days', '7', '-subj', `/CN=${caName}`]);
      chmodSync(this.ca.key, 0o600);
    }
  }

  /** Issues a certificate signed by the cluster CA. */
  issue(name: string, o: { cn: string; org?: string; dns?: string[]; ips?: string[]; server?: boolean; client?: boolean }): Cert {
    const c = { crt: join(this.dir, `${name}.crt`), key: join(this.dir, `${name}.key`) };
    if (existsSync(c.crt)) return c;
    const csr = join(this.dir, `${name}.csr`);
    const ext = join(this.dir, `${name}.ext`);
    const subj = `/CN=${o.cn}${o.org ? `/O=${o.org}` : ''}`;
    openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', c.key, '-out', csr, '-subj', subj]);
    chmodSync(c.key, 0o600);
    const usages = [o.server ? 'serverAuth' : '', o.client ? 'clientAuth' : ''].filter(Boolean).join(',');
    const sans = [...(o.dns ?? []).map((d) => `DNS:${d}`), ...(o.ips ?? []).map((i) => `IP:${i}`)].join(',');
    writeFileSync(ext, `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=${usages}\n${sans ? `subjectAltName=${sans}\n` : ''}`);
    openssl(['x509', '-req', '-in', csr, '-CA', this.ca.crt, '-CAkey', this.ca.key, '-CAcreateserial', '-out', c.crt, '-days', '7', '-extfile', ext]);
    return c;
  }

  /** The service-account token signing key pair. */
  serviceAccountKey(): { key: string; pub: string } {
    const key = join(this.dir, 'sa.key');
    const pub = join(this.dir, 'sa.pub');
    if (!existsSync(key)) {
      openssl(['genrsa', '-out', key, '2048']);
      chmodSync(key, 0o600);
      openssl(['rsa', '-in', key, '-pubout', '-out', pub]);
    }
    return { key, pub };
  }
}

/** A kubeconfig that references the certificate files (0600). */
export function writeKubeconfig(path: string, server: string, ca: string, user: Cert, name = 'gvisor-e2e'): void {
  const cfg = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name, cluster: { server, 'certificate-authority': ca } }],
    users: [{ name: 'user', user: { 'client-certificate': user.crt, 'client-key': user.key } }],
    contexts: [{ name, context: { cluster: name, user: 'user' } }],
    'current-context': name,
  };
  writeFileSync(path, stringify(cfg), { mode: 0o600 });
}
