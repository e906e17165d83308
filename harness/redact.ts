import { readFileSync } from 'node:fs';
// Secrets must never reach a report or a log. Redaction is applied at the two choke points
// every text passes: the node transcript and the report writer.

// Keys whose value is a secret, wherever they appear: YAML, TOML, JSON, env, headers. The key may
// carry a prefix (aws_secret_access_key, client_secret, registry_password) but must end in one of
// these, so "authentication:" or "token_file =" are left alone.
const SECRET_KEY = String.raw`[\w.-]*?(?:token|password|passwd|passphrase|secret|secret[_-]?key|secret[_-]?access[_-]?key|api[_-]?key|access[_-]?key|private[_-]?key|auth|authorization|credentials?|identitytoken|client-key-data|client-certificate-data|certificate-authority-data)`;
// The value: JSON-escaped quotes (text that went through JSON.stringify), quotes, or — after ":" — the
// rest of the line, spaces included (YAML, headers); after "=" one word (flags, env, TOML).
// Text may have been JSON-escaped more than once (a message quoting JSON, inside a result file).
const ESCAPED_QUOTED = String.raw`\\+"(?:(?!\\+")[^\n])*\\+"`;
const QUOTED = String.raw`"(?:[^"\\\n]|\\.)*"|'[^'\n]*'`;
const REST_OF_LINE = String.raw`[^\s"'\\<&,}\]|>][^\n"\\<&]*`;
const WORD = String.raw`[^\s"'\\<&,}\]]+`;
const KEY_VALUE = new RegExp(String.raw`(^|[^\w.-])(${SECRET_KEY})(\\*["']?)([ \t]*)(:|=)([ \t]*)(${ESCAPED_QUOTED}|${QUOTED}|${REST_OF_LINE})`, 'gim');
const SCHEME = /^((?:Basic|Bearer|Digest|Negotiate|Token)\s+)/i;

function redactValue(sep: string, value: string): string {
  const escaped = /^(\\+)"/.exec(value);
  if (escaped) return `${escaped[1]}"[REDACTED]${escaped[1]}"`;
  if (value.startsWith('"')) return '"[REDACTED]"';
  if (value.startsWith("'")) return "'[REDACTED]'";
  const scheme = SCHEME.exec(value)?.[1] ?? '';
  if (sep === '=') {
    // One word after "=": the rest of the line may be other flags.
    const word = new RegExp(`^${WORD}`).exec(value.slice(scheme.length))?.[0] ?? '';
    return `${scheme}[REDACTED]${value.slice(scheme.length + word.length)}`;
  }
  return `${scheme}[REDACTED]`;
}

/** YAML block scalars under a secret key (`token: |` and the more-indented lines below it), plain or JSON-escaped. */
function redactBlockScalars(text: string): string {
  const head = new RegExp(String.raw`^(\s*(?:-\s+)?)["']?${SECRET_KEY}["']?\s*:\s*[|>][-+0-9]*\s*$`, 'i');
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = head.exec(lines[i]!);
    if (!m) continue;
    const indent = m[1]!.length;
    let j = i + 1;
    let first = true;
    while (j < lines.length && (lines[j]!.trim() === '' || /^\s*/.exec(lines[j]!)![0].length > indent)) {
      if (lines[j]!.trim() !== '') {
        lines[j] = first ? `${' '.repeat(indent + 2)}[REDACTED]` : '';
        first = false;
      }
      j++;
    }
    // Lines blanked after the first are dropped, so the block keeps one line.
    lines.splice(i + 1, j - i - 1, ...lines.slice(i + 1, j).filter((l, k) => k === 0 || l !== ''));
  }
  // The same in JSON-escaped text, where the lines are joined by a literal "\n".
  return lines.join('\n').replace(new RegExp(String.raw`(${SECRET_KEY}\\*["']?[ \t]*:[ \t]*[|>][-+0-9]*)(\\+n)(?: {2,}|\\+t)(?:[^\\"\n]|\\+[^n"\\])*(?:\\+n(?: {2,}|\\+t)(?:[^\\"\n]|\\+[^n"\\])*)*`, 'gi'), '$1$2  [REDACTED]');
}

const PATTERNS: [RegExp, string][] = [
  // PEM blocks: private keys, whole or cut short (a truncated block loses its END line).
  [/-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----/g, '[REDACTED PRIVATE KEY]'],
  [/-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:[A-Za-z0-9+/=\s]|\\+[nrt])*/g, '[REDACTED PRIVATE KEY]'],
  // Credentials in URLs: scheme://user:password@host.
  [/\b([a-z][a-z0-9+.-]*:\/\/)[^\s/:@"'<>]+:[^\s/@"'<>]+@/gi, '$1[REDACTED]@'],
  // Authorization schemes wherever they appear (a header without its name).
  [/\b(Basic|Bearer|Digest)(\s+)(?!\[REDACTED)[A-Za-z0-9._~+/=-]{8,}/g, '$1$2[REDACTED]'],
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
  out = out.replace(PATTERNS[0]![0], PATTERNS[0]![1]).replace(PATTERNS[1]![0], PATTERNS[1]![1]);
  out = redactBlockScalars(out);
  out = out.replace(KEY_VALUE, (_m, pre: string, key: string, q: string, s1: string, sep: string, s2: string, value: string) =>
    value.startsWith('[REDACTED') ? _m : `${pre}${key}${q}${s1}${sep}${s2}${redactValue(sep, value)}`,
  );
  for (const [re, rep] of PATTERNS.slice(2)) out = out.replace(re, rep);
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
    for (const m of text.matchAll(new RegExp(String.raw`["']?${SECRET_KEY}["']?[ \t]*:[ \t]*(?:"([^"\n]+)"|'([^'\n]+)'|([^\s"'{}\[\],|>][^\n]*))`, 'gi'))) registerSecret((m[1] ?? m[2] ?? m[3])?.trim());
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
