// Judges a node's runsc sidecars (gvisor-bin/) by the gVisor spec: what fails the node, and what the
// report should warn about. Pure, so tests/unit can feed it every case; the suite gathers the facts.
import { cite, gvisor } from '../spec/index.ts';

export interface SidecarFile {
  name: string;
  state: 'ok' | 'missing' | 'not-regular' | 'not-executable';
  /** The first line of `<sidecar> --version` ('' when it printed none); absent when not asked. */
  version?: string;
}

export interface SidecarFacts {
  node: string;
  runsc: string;
  /** runsc's build label (`runsc --version`). */
  runscVersion: string;
  /** runsc's own defaults, from `runsc flags`; undefined where runsc does not know the flag. */
  defaults: { usage?: string; release?: string };
  /** runsc.toml's `[runsc_config]` values. */
  configured: { usage?: string; release?: string };
  dir: string;
  files: SidecarFile[];
}

export interface SidecarVerdict {
  /** runsc predates sidecar binaries: nothing to check. */
  notApplicable?: string;
  failures: string[];
  warnings: string[];
}

export function judgeSidecars(f: SidecarFacts): SidecarVerdict {
  const out: SidecarVerdict = { failures: [], warnings: [] };
  if (f.defaults.usage === undefined && f.configured.usage === undefined) {
    return { ...out, notApplicable: `runsc ${f.runscVersion} on ${f.node} has no --sidecar-usage-policy: it predates sidecar binaries` };
  }
  const policy = gvisor.usagePolicy(f.configured.usage, f.defaults.usage);
  if (!policy) {
    out.failures.push(`runsc.toml on ${f.node} sets sidecar-usage-policy = "${f.configured.usage}", which runsc rejects (expected DEFAULT, STRICT or LEGACY_DEPRECATED_SLOW_EMBEDDED_FALLBACK)${cite(gvisor.usagePolicy)}`);
    return out;
  }
  const unusable = f.files.filter((x) => x.state !== 'ok');
  const why = (x: SidecarFile) => (x.state === 'missing' ? x.name : `${x.name} (${x.state.replace('-', ' ')})`);
  if (unusable.length === f.files.length) {
    out.failures.push(`runsc ${f.runscVersion} on ${f.node} (sidecar-usage-policy ${policy}) has no sidecar binaries: ${f.dir} holds none of ${f.files.map((x) => x.name).join(', ')}${cite(gvisor.sidecars)}`);
  } else if (unusable.length > 0) {
    const list = unusable.map(why).join(', ');
    if (gvisor.fallbackAllowed(policy)) {
      out.warnings.push(
        `runsc on ${f.node} runs without on-disk ${list} in ${f.dir}: it uses embedded copies or starts without them, which is deprecated, slows sandbox start, and fails once the policy is STRICT (policy now ${policy})${cite(gvisor.fallbackAllowed)}`,
      );
    } else {
      out.failures.push(`runsc on ${f.node} runs with sidecar-usage-policy STRICT but ${f.dir} lacks ${list}: sandboxes that need them do not start${cite(gvisor.fallbackAllowed)}`);
    }
  }
  const enforced = gvisor.releaseEnforced(f.configured.release ?? f.defaults.release, f.runscVersion);
  for (const x of f.files) {
    if (x.state !== 'ok' || x.version === undefined) continue;
    const label = /^runsc version (\S+)/.exec(x.version)?.[1];
    if (!label) {
      out.failures.push(`${f.dir}/${x.name} on ${f.node} does not report its release (\`--version\` printed "${x.version || '(nothing)'}")${cite(gvisor.sidecars)}`);
    } else if (label !== f.runscVersion) {
      const msg = `${f.dir}/${x.name} on ${f.node} is from release "${label}", runsc is "${f.runscVersion}"`;
      if (enforced) out.failures.push(`${msg}: runsc refuses sidecars from another release${cite(gvisor.releaseEnforced)}`);
      else out.warnings.push(`${msg} (not enforced for this runsc, but all gVisor binaries should come from one release)${cite(gvisor.releaseEnforced)}`);
    }
  }
  return out;
}
