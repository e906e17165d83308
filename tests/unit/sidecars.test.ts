// The gVisor profile (suites/spec/gvisor.ts) and the runsc-installation suite's sidecar verdicts, case by case.
import { describe, expect, it } from 'vitest';
import { gvisor } from '../../suites/spec/index.ts';
import { judgeSidecars, type SidecarFacts } from '../../suites/runsc-installation/sidecars.ts';

const ALL = ['runsc-metric-server', 'checkpointgofer', 'gvisor_sentry', 'gvisor-sentry-prewarmer'];
const V = 'release-20260914.0';
function facts(over: Partial<SidecarFacts> = {}, files: Record<string, Partial<SidecarFacts['files'][number]>> = {}): SidecarFacts {
  return {
    node: 'n1',
    runsc: '/usr/local/bin/runsc',
    runscVersion: V,
    defaults: { usage: 'DEFAULT', release: 'IF_RELEASE_BUILD' },
    configured: {},
    dir: '/usr/local/bin/gvisor-bin',
    files: ALL.map((name) => ({ name, state: 'ok' as const, ...(name === 'gvisor-sentry-prewarmer' ? {} : { version: `runsc version ${V}` }), ...files[name] })),
    ...over,
  };
}

describe('the gVisor profile', () => {
  it('lists the four sidecars of a standard installation, citing gvisorbinaries.go', () => {
    expect(gvisor.sidecars().map((s) => s.name)).toEqual(ALL);
    expect(gvisor.sidecars.source).toContain('runsc/gvisorbinaries/gvisorbinaries.go');
  });
  it('looks next to runsc, or next to the binary a symlinked runsc resolves to', () => {
    expect(gvisor.sidecarDir({ runsc: '/usr/local/bin/runsc', nextToPathIsDir: true, resolvedRunsc: '/opt/gvisor/runsc' })).toBe('/usr/local/bin/gvisor-bin');
    expect(gvisor.sidecarDir({ runsc: '/usr/local/bin/runsc', nextToPathIsDir: false, resolvedRunsc: '/opt/gvisor/runsc' })).toBe('/opt/gvisor/gvisor-bin');
    expect(gvisor.sidecarDir({ runsc: '/runsc', nextToPathIsDir: true, resolvedRunsc: '/runsc' })).toBe('/gvisor-bin');
  });
  it('takes runsc.toml over runsc default, case-insensitively; rejects unknown values', () => {
    expect(gvisor.usagePolicy(undefined, 'DEFAULT')).toBe('DEFAULT');
    expect(gvisor.usagePolicy('strict', 'DEFAULT')).toBe('STRICT');
    expect(gvisor.usagePolicy(undefined, 'STRICT')).toBe('STRICT');
    expect(gvisor.usagePolicy('sometimes', 'DEFAULT')).toBeUndefined();
    expect(gvisor.fallbackAllowed('STRICT')).toBe(false);
    expect(gvisor.fallbackAllowed('LEGACY_DEPRECATED_SLOW_EMBEDDED_FALLBACK')).toBe(true);
  });
  it('enforces one release for release builds under IF_RELEASE_BUILD, always under ALWAYS, never under NEVER', () => {
    expect(gvisor.isReleaseVersion('release-20260914.0')).toBe(true);
    expect(gvisor.isReleaseVersion('release-20260831.0-12-g602040cbcc58')).toBe(false);
    expect(gvisor.isReleaseVersion('v0.0.0-20260905035102-160fafc42237')).toBe(false);
    expect(gvisor.releaseEnforced(undefined, V)).toBe(true);
    expect(gvisor.releaseEnforced('IF_RELEASE_BUILD', 'v0.0.0-1')).toBe(false);
    expect(gvisor.releaseEnforced('always', 'v0.0.0-1')).toBe(true);
    expect(gvisor.releaseEnforced('NEVER', V)).toBe(false);
  });
});

describe('sidecar verdicts', () => {
  it('passes a complete gvisor-bin from runsc release, without warnings', () => {
    expect(judgeSidecars(facts())).toEqual({ failures: [], warnings: [] });
  });
  it('does not apply to a runsc without the sidecar policy flag', () => {
    const v = judgeSidecars(facts({ defaults: {}, files: ALL.map((name) => ({ name, state: 'missing' as const })) }));
    expect(v.notApplicable).toMatch(/predates sidecar binaries/);
    expect(v.failures).toEqual([]);
  });
  it('fails a policy-aware runsc with no sidecars at all, naming the directory, whatever the policy', () => {
    const none = Object.fromEntries(ALL.map((n) => [n, { state: 'missing' as const, version: undefined }]));
    const v = judgeSidecars(facts({}, none));
    expect(v.failures).toHaveLength(1);
    expect(v.failures[0]).toContain('/usr/local/bin/gvisor-bin holds none of');
    expect(v.failures[0]).toContain('[rule: gvisor runsc/gvisorbinaries/gvisorbinaries.go');
  });
  it('warns (deprecated, slower start) for missing sidecars a fallback covers; fails them under STRICT', () => {
    const partial = { 'gvisor-sentry-prewarmer': { state: 'missing' as const }, checkpointgofer: { state: 'not-executable' as const, version: undefined } };
    const lenient = judgeSidecars(facts({}, partial));
    expect(lenient.failures).toEqual([]);
    expect(lenient.warnings.join()).toMatch(/checkpointgofer \(not executable\), gvisor-sentry-prewarmer in .*deprecated, slows sandbox start/);
    const strictByToml = judgeSidecars(facts({ configured: { usage: 'STRICT' } }, partial));
    expect(strictByToml.failures.join()).toMatch(/STRICT but \/usr\/local\/bin\/gvisor-bin lacks checkpointgofer \(not executable\), gvisor-sentry-prewarmer/);
    // A runsc whose own default became STRICT is judged the same without runsc.toml saying so.
    expect(judgeSidecars(facts({ defaults: { usage: 'STRICT' } }, partial)).failures).toHaveLength(1);
  });
  it('fails a sidecar of another release when runsc enforces it, naming both labels; warns when it does not', () => {
    const other = { checkpointgofer: { version: 'runsc version release-20260831.0-12-g602040cbcc58' } };
    const v = judgeSidecars(facts({}, other));
    expect(v.failures.join()).toContain('checkpointgofer on n1 is from release "release-20260831.0-12-g602040cbcc58", runsc is "release-20260914.0"');
    // A development build (not a release label) with sidecars labelled otherwise: runsc only warns, so do we.
    const devSkew = judgeSidecars(facts({ runscVersion: 'v0.0.0-x' }));
    expect(devSkew.failures).toEqual([]);
    expect(devSkew.warnings.join()).toMatch(/not enforced for this runsc/);
  });
  it('fails a sidecar that does not say its release, and an unknown policy in runsc.toml', () => {
    expect(judgeSidecars(facts({}, { gvisor_sentry: { version: '' } })).failures.join()).toMatch(/gvisor_sentry on n1 does not report its release/);
    expect(judgeSidecars(facts({ configured: { usage: 'sometimes' } })).failures.join()).toMatch(/sidecar-usage-policy = "sometimes", which runsc rejects/);
  });
});
