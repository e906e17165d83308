import { readFileSync } from 'node:fs';
// Secrets must never reach a report or a log. Redaction is applied at the two choke points
// every text passes: the node transcript and the report writer.

const PATTERNS: [RegExp, string][] = [
  // PEM blocks: private keys, certificates' keys.
  [/-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----/g, '[REDACTED PRIVATE KEY]'],
  // Bearer tokens and kubeconfig token / password / client key fields.
  [/(Bearer\s+)[A-Za-z0-9._~+/=-]+/gi, '$1[REDACTED]'],
  // The value may sit behind plain or JSON-escaped (\") quotes.
  [/((?:token|password|passwd|secret|client-key-data|client-certificate-data|certificate-authority-data)\\?["']?\s*[:=]\s*(?:\\?["'])?)[^\s"',}\\]+/gi, '$1[REDACTED]'],
  // JWTs (service-account tokens) wherever they appear.
  [/eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}/g, '[REDACTED JWT]'],
];

const literals = new Set<string>();

/** Registers a concrete secret value (e.g. a token read from a kubeconfig) to be masked everywhere. */
export function registerSecret(value: string | undefined): void {
  if (value && value.length >= 6) literals.add(value);
}

export function redact(text: string): string {
  let out = text;
  for (const lit of literals) out = out.split(lit).join('[REDACTED]');
  for (const [re, rep] of PATTERNS) out = out.replace(re, rep);
  return out;
}

const SECRET_ENV = /(TOKEN|SECRET|PASSWORD|PASSWD|PRIVATE_KEY|API_KEY|CREDENTIAL)/i;

/** Registers secrets this process can see: secret-looking environment variables, KUBECONFIG credentials, SSH keys, the config's kubeconfig. */
export function registerKnownSecrets(privateKeyPaths: string[] = [], kubeconfigPaths: string[] = []): void {
  for (const [k, v] of Object.entries(process.env)) {
    if (v && SECRET_ENV.test(k)) {
      registerSecret(v);
      registerKeyLines(v);
    }
  }
  for (const file of [...(process.env.KUBECONFIG ?? '').split(':').filter(Boolean), ...kubeconfigPaths]) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    // YAML or JSON (a kubeconfig written by client libraries is one line of JSON).
    for (const m of text.matchAll(/["']?\b(?:token|password|client-key-data|client-certificate-data)["']?\s*:\s*["']?([^\s"',}]+)/g)) registerSecret(m[1]);
  }
  for (const p of privateKeyPaths) {
    try {
      registerKeyLines(readFileSync(p, 'utf8'));
    } catch {
      /* unreadable keys are reported where they are used */
    }
  }
}

/** Every base64 line of a PEM/OpenSSH key, so even a partial leak is masked. */
function registerKeyLines(text: string): void {
  if (!/-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----/.test(text)) return;
  for (const line of text.split('\n')) if (/^[A-Za-z0-9+/=]{16,}$/.test(line.trim())) registerSecret(line.trim());
}
