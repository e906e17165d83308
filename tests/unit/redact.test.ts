import { describe, expect, it } from 'vitest';
import { redact, registerSecret } from '../../harness/redact.ts';
import { ALL_FORMS, kubeconfigText, tomlBlock } from './fixtures/secrets.ts';

const KEY_BODY = 'b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACDz0fRk4y3nV8u1bmZrY1lGm2Xw6vH8tQy9w2ZqKQAAAJgAAAAAAAAAAAAA';
const OPENSSH_KEY = `-----BEGIN OPENSSH PRIVATE KEY-----\n${KEY_BODY}\n-----END OPENSSH PRIVATE KEY-----`;
const JWT =
  'eyJhbGciOiJSUzI1NiIsImtpZCI6IkRfa2V5In0.eyJpc3MiOiJrdWJlcm5ldGVzL3NlcnZpY2VhY2NvdW50Iiwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50OmRlZmF1bHQ6ZGVmYXVsdCJ9.c2lnbmF0dXJlX2J5dGVzX2hlcmVfMTIzNDU2Nzg5MA';

describe('redact', () => {
  it.each([
    ['OPENSSH', OPENSSH_KEY],
    ['RSA', `-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x\n-----END RSA PRIVATE KEY-----`],
    ['PKCS#8', `-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----`],
    ['EC', `-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB5\n-----END EC PRIVATE KEY-----`],
  ])('removes a %s private key block', (_kind, pem) => {
    const out = redact(`before\n${pem}\nafter`);
    expect(out).toBe('before\n[REDACTED PRIVATE KEY]\nafter');
  });

  it('removes a private key even inside JSON-escaped text', () => {
    const out = redact(JSON.stringify({ stdout: OPENSSH_KEY }));
    expect(out).not.toContain('b3BlbnNzaC1rZXkt');
    expect(out).toContain('[REDACTED PRIVATE KEY]');
  });

  it('removes two separate key blocks but keeps the text between them', () => {
    const out = redact(`${OPENSSH_KEY}\nmiddle\n${OPENSSH_KEY}`);
    expect(out).toBe('[REDACTED PRIVATE KEY]\nmiddle\n[REDACTED PRIVATE KEY]');
  });

  it('removes Bearer tokens', () => {
    expect(redact('Authorization: Bearer abc.DEF-123_~+/=xyz')).toBe('Authorization: Bearer [REDACTED]');
    expect(redact('curl -H "authorization: bearer s3cr3tT0ken" https://api')).toBe('curl -H "authorization: bearer [REDACTED]" https://api');
  });

  it.each([
    ['token: abc123def', 'token: [REDACTED]'],
    ['  token: "abc123def"', '  token: "[REDACTED]"'],
    ['"token":"abc123def","x":1', '"token":"[REDACTED]","x":1'],
    ['--token=abc123def --v=2', '--token=[REDACTED] --v=2'],
    ['password: hunter22', 'password: [REDACTED]'],
    ["secret='p4ss'", "secret='[REDACTED]'"],
    ['    client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQo=', '    client-key-data: [REDACTED]'],
    ['    client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==', '    client-certificate-data: [REDACTED]'],
  ])('removes kubeconfig-style field %j', (input, want) => {
    expect(redact(input)).toBe(want);
  });

  it('removes the secrets of a whole kubeconfig user entry', () => {
    const kubeconfig = `users:\n- name: admin\n  user:\n    client-certificate-data: Q0VSVERBVEE=\n    client-key-data: S0VZREFUQQ==\n    token: ${JWT}\n`;
    const out = redact(kubeconfig);
    expect(out).not.toMatch(/Q0VSVERBVEE=|S0VZREFUQQ==|eyJ/);
    expect(out).toContain('- name: admin');
  });

  it('removes JWT-looking strings anywhere', () => {
    expect(redact(`sa=${JWT} end`)).toBe('sa=[REDACTED JWT] end');
    expect(redact(`{"jwt":"${JWT}"}`)).toBe('{"jwt":"[REDACTED JWT]"}');
  });

  it('removes registered secret literals everywhere, including regex metacharacters', () => {
    registerSecret('Zq9-literal-secret');
    registerSecret('a.b*c+d?(e)');
    expect(redact('x Zq9-literal-secret y Zq9-literal-secret')).toBe('x [REDACTED] y [REDACTED]');
    expect(redact('v=a.b*c+d?(e);')).toBe('v=[REDACTED];');
    expect(redact('aXbbcdde')).toBe('aXbbcdde');
  });

  it('ignores registered values that are too short or missing', () => {
    registerSecret('abc12');
    registerSecret(undefined);
    registerSecret('');
    expect(redact('abc12 stays')).toBe('abc12 stays');
  });

  it.each([
    'Starting gVisor...',
    '[    2.643852] Ready!',
    'LimitNOFILE=1048576',
    'runtime_type = "io.containerd.runsc.v1"',
    'ConfigPath = "/etc/containerd/runsc.toml"',
    'image_pull_progress_timeout = "5m0s"',
    'ping: permission denied (are you root?)',
    'sha256:3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a',
    'SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8',
    'kubectl create secret generic foo',
    '-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----',
    '',
  ])('leaves ordinary text alone: %j', (text) => {
    expect(redact(text)).toBe(text);
  });

  // Regression (was a bug): harness/redact.ts — the token/password/secret pattern allows an optional quote
  // (["']?) before the value but not a JSON-escaped one (\"). writeReports() redacts
  // JSON.stringify(summary), where a message containing password="hunter22" has become
  // password=\"hunter22\"; only the backslash is replaced and the value is written to
  // summary.json. (summarize() pre-redacts failure messages, but skip notes (r.note) are not.)
  it('removes quoted field values in JSON-escaped text (summary.json)', () => {
    const out = redact(JSON.stringify({ message: 'password="hunter22" token: "abcdef123"' }));
    expect(out).not.toContain('hunter22');
    expect(out).not.toContain('abcdef123');
  });
});

// The secret corpus (issue 11, item 19): every form, as it sits in a file, as JSON-escaped text (a
// transcript, allure-results) and XML-escaped (JUnit), loses its secret.
describe('the secret corpus', () => {
  it('has at least 30 forms', () => {
    expect(ALL_FORMS.length).toBeGreaterThanOrEqual(30);
  });
  it.each(ALL_FORMS.map((f) => [f.name, f] as const))('%s', (_n, f) => {
    for (const text of [f.text, `before\n${f.text}\nafter`, JSON.stringify({ stdout: `x\n${f.text}\ny` }), JSON.stringify(JSON.stringify({ m: f.text }))]) {
      const out = redact(text);
      for (const s of f.secrets) expect(out, `${f.name} in ${JSON.stringify(text)}`).not.toContain(s);
    }
  });
  it('the whole config.toml block and kubeconfig, and what follows them, stay readable', () => {
    const out = redact(`${tomlBlock()}\nafter = 1\n${kubeconfigText()}`);
    for (const f of ALL_FORMS) for (const s of f.secrets) expect(out, f.name).not.toContain(s);
    expect(out).toContain('after = 1');
    expect(out).toContain('current-context: c');
    expect(out).toContain('- name: user-3');
  });
});
