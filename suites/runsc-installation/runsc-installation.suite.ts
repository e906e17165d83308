import { afterAll } from 'vitest';
import { InfrastructureError } from '../../harness/errors.ts';
import { readNodeFile, sh } from '../../harness/node.ts';
import { SuiteContext, check, warn } from '../context.ts';
import { gardener, gvisor, imageBuilder, parseTomlFile, runscConfigOf, runtimeTable, type Toml } from '../spec/index.ts';
import { judgeSidecars, type SidecarFacts, type SidecarFile } from './sidecars.ts';

// Each describe block is one node (its title is the node name, which the report uses).
// runsc and its shim are where the config says, run, report the expected version, and
// containerd really serves the handler — on the gVisor pool's nodes, and nowhere else.
// What is expected comes from the spec (suites/spec), each failure names the rule's source.

const ctx = new SuiteContext('runsc-installation');
afterAll(() => ctx.close());
const g = ctx.gvisor;
const bins = gardener.binaries(g.binaryPath);
const runsc = bins.runsc;
const shim = bins.shim;
const expectedRuntime = (n: (typeof ctx.nodes)[number]) => gardener.runtimeEntry({ shim: g.shim, binaryPath: g.binaryPath, runscConfigPath: n.paths.runscConfig });
const flags = gardener.runscFlags(g.configFlags);

async function containerdConfigText(n: (typeof ctx.nodes)[number]): Promise<string> {
  const text = await readNodeFile(ctx.node(n), n.paths.containerdConfig);
  check(text !== undefined, `${n.paths.containerdConfig} does not exist on ${n.name}`);
  return text;
}

async function containerdConfig(n: (typeof ctx.nodes)[number]): Promise<Toml> {
  return parseTomlFile(await containerdConfigText(n), n.paths.containerdConfig, n.name);
}

/** The value after "(default " in runsc's help for one flag of `runsc flags`, or undefined where runsc lacks the flag. */
function flagDefault(help: string, flag: string): string | undefined {
  const lines = help.split('\n');
  const i = lines.findIndex((l) => new RegExp(`^\\s*-${flag}(\\s|$)`).test(l));
  if (i < 0) return undefined;
  const next = lines.findIndex((l, k) => k > i && /^\s*-[a-zA-Z]/.test(l));
  const block = lines.slice(i, next < 0 ? undefined : next).join(' ');
  return /\(default (\S+?)\)/.exec(block)?.[1] ?? '';
}

/** What runsc on node n is, how it is told to treat sidecars, and what its gvisor-bin/ holds (one command). */
async function sidecarFacts(n: (typeof ctx.nodes)[number]): Promise<SidecarFacts> {
  const names = gvisor.sidecars();
  const node = ctx.node(n);
  const head = await node.exec(
    [
      `r=${sh(runsc)}`,
      'echo "version $("$r" --version 2>/dev/null | head -n1)"',
      'if [ -d "$(dirname "$r")/gvisor-bin" ]; then echo "next 1"; else echo "next 0"; fi',
      'echo "resolved $(readlink -f "$r")"',
    ].join('\n'),
  );
  const kv = (k: string) => head.stdout.split('\n').find((l) => l.startsWith(`${k} `))?.slice(k.length + 1).trim() ?? '';
  const runscVersion = /^runsc version (\S+)/.exec(kv('version'))?.[1] ?? kv('version');
  const dir = gvisor.sidecarDir({ runsc, nextToPathIsDir: kv('next') === '1', resolvedRunsc: kv('resolved') || runsc });
  const help = (await node.exec(`${sh(runsc)} flags 2>&1`)).stdout;
  const toml = await readNodeFile(node, n.paths.runscConfig);
  const conf = toml === undefined ? {} : runscConfigOf(parseTomlFile(toml, n.paths.runscConfig, n.name));
  const files: SidecarFile[] = [];
  for (const x of names) {
    const f = `${dir}/${x.name}`;
    const st = (await node.exec(`if [ ! -e ${sh(f)} ]; then echo missing; elif [ ! -f ${sh(f)} ]; then echo not-regular; elif [ ! -x ${sh(f)} ]; then echo not-executable; else echo ok; fi`)).stdout.trim() as SidecarFile['state'];
    const file: SidecarFile = { name: x.name, state: st };
    // Unset, not empty: the sidecar prints its label before it would check GVISOR_ENFORCE_RELEASE.
    if (st === 'ok' && x.reportsVersion) file.version = (await node.exec(`env -u GVISOR_ENFORCE_RELEASE timeout 20 ${sh(f)} --version 2>/dev/null | head -n1`)).stdout.trim();
    files.push(file);
  }
  const usage = flagDefault(help, 'sidecar-usage-policy');
  const release = flagDefault(help, 'sidecar-release-enforcement-policy');
  return {
    node: n.name,
    runsc,
    runscVersion,
    defaults: { usage: usage === undefined ? undefined : usage || 'DEFAULT', release: release === undefined ? undefined : release || 'IF_RELEASE_BUILD' },
    configured: { usage: conf['sidecar-usage-policy'], release: conf['sidecar-release-enforcement-policy'] },
    dir,
    files,
  };
}

ctx.eachNode(ctx.gvisorNodes, (n) => {
  ctx.test(n, `runsc is installed at ${runsc} and executable`, async () => {
    // The mode and type go into the message: "not executable" alone does not say what is there instead.
    const r = await ctx.node(n).exec(
      `if [ ! -e ${sh(runsc)} ]; then echo missing; elif [ ! -x ${sh(runsc)} ] || [ -d ${sh(runsc)} ]; then echo "not-executable $(stat -c '%A %a %F' ${sh(runsc)})"; else echo ok; fi`,
    );
    const out = r.stdout.trim();
    check(out !== 'missing', `runsc is missing on ${n.name}: expected an executable at ${runsc}`, gardener.binaries);
    const [, symbolic, octal, ...type] = out.split(' ');
    check(out === 'ok', `runsc at ${runsc} on ${n.name} is not an executable file: mode ${symbolic} (0${octal}), ${type.join(' ')}`);
  });

  ctx.test(n, `runsc runs and reports version ${ctx.plan.expectedVersion || '(any)'}`, async () => {
    const r = await ctx.node(n).exec(`${sh(runsc)} --version`);
    check(r.code === 0, `\`${runsc} --version\` on ${n.name} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 300) || '(no output)'}`);
    const first = r.stdout.split('\n')[0] ?? '';
    check(/^runsc version /.test(first), `\`${runsc} --version\` on ${n.name} printed "${first}", expected "runsc version …"`);
    if (ctx.plan.expectedVersion) {
      check(first.includes(ctx.plan.expectedVersion), `runsc on ${n.name} reports "${first}", expected version ${ctx.plan.expectedVersion}`);
    }
  });

  ctx.test(n, 'runsc has every file it needs (static binary, or all shared libraries resolve)', async () => {
    // Without ldd the node cannot be asked: that is not a missing library (broken, not failed).
    // `command -v` of some shells does not check the exec bit: ask for an executable file.
    if ((await ctx.node(n).exec('p=$(command -v ldd) && [ -f "$p" ] && [ -x "$p" ]')).code !== 0) throw new InfrastructureError(`${n.name} has no ldd: cannot tell whether runsc's shared libraries resolve`);
    const r = await ctx.node(n).exec(`ldd ${sh(runsc)} 2>&1 || true`);
    const missing = r.stdout.split('\n').filter((l) => /not found/.test(l));
    check(missing.length === 0, `runsc on ${n.name} needs files that are not installed: ${missing.join('; ')}`);
  });

  ctx.test(n, `runsc's sidecar binaries are in gvisor-bin/ next to it, usable, from runsc's release`, async (t) => {
    const facts = await sidecarFacts(n);
    const v = judgeSidecars(facts);
    if (v.notApplicable) return t.skip(v.notApplicable);
    for (const w of v.warnings) await warn(w);
    check(v.failures.length === 0, v.failures.join('; '));
  });

  if (g.shim === 'runsc') {
    ctx.test(n, `containerd-shim-runsc-v1 is installed at ${shim} and runs`, async () => {
      const r = await ctx.node(n).exec(`[ -x ${sh(shim)} ] && [ -f ${sh(shim)} ] && ${sh(shim)} -v`);
      check(r.code === 0, `containerd-shim-runsc-v1 is missing or broken on ${n.name}: expected an executable at ${shim} that answers -v (exit ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 200)})`, gardener.binaries);
    });
  }

  const want = expectedRuntime(n);
  ctx.test(n, `config.toml declares runtime handler "${g.handler}" (${want.runtime_type})`, async () => {
    const cfg = await containerdConfig(n);
    const rt = runtimeTable(cfg, g.handler);
    check(rt.version, `${n.paths.containerdConfig} on ${n.name} has config version ${String(cfg.version)}, expected 1, 2 or 3`, gardener.configVersion);
    check(rt.entry, `${n.paths.containerdConfig} on ${n.name} has no runtime "${g.handler}": expected a containerd.runtimes.${g.handler} table at [${rt.path}] (config version ${rt.version})`, gardener.runtimeTablePath);
    check(rt.entry.runtime_type === want.runtime_type, `runtime "${g.handler}" on ${n.name} has runtime_type "${String(rt.entry.runtime_type)}", expected "${want.runtime_type}"`, want);
    const opts = (rt.entry.options ?? {}) as Toml;
    for (const [k, v] of Object.entries(want.options)) {
      check(opts[k] === v, `runtime "${g.handler}" on ${n.name} has options.${k} "${String(opts[k])}", expected "${v}"`, want);
    }
  });

  if (g.shim === 'runsc') {
    ctx.test(n, `runsc.toml sets net-raw = "${flags['net-raw']}"`, async () => {
      const text = await readNodeFile(ctx.node(n), n.paths.runscConfig);
      check(text !== undefined, `${n.paths.runscConfig} does not exist on ${n.name}`, want);
      const found = runscConfigOf(parseTomlFile(text, n.paths.runscConfig, n.name));
      check(found['net-raw'] === flags['net-raw'], `${n.paths.runscConfig} on ${n.name} sets net-raw = "${found['net-raw'] ?? '(unset)'}", expected "${flags['net-raw']}"`, gardener.runscFlags);
      for (const k of ['debug', 'nvproxy'] as const) {
        check((found[k] ?? 'false') === flags[k], `${n.paths.runscConfig} on ${n.name} sets ${k} = "${found[k]}", expected "${flags[k]}" (or unset)`, gardener.runscFlags);
      }
    });
  }

  ctx.test(n, `containerd's CRI serves handler "${g.handler}"`, async () => {
    const handlers = await (await ctx.cri(n)).runtimeHandlers();
    const rt = handlers[g.handler];
    check(rt, `containerd on ${n.name} does not serve runtime handler "${g.handler}" (it serves: ${Object.keys(handlers).join(', ') || 'none'})`);
    check(rt.runtimeType === want.runtime_type, `containerd on ${n.name} serves "${g.handler}" with runtime type "${rt.runtimeType}", expected "${want.runtime_type}"`, want);
  });
});

ctx.eachNode(ctx.otherNodes, (n) => {
  ctx.test(n, `(outside the gVisor pools) has no runsc at ${runsc}`, async () => {
    const r = await ctx.node(n).exec(`[ -e ${sh(runsc)} ]`);
    check(r.code !== 0, `${n.name} (pool "${n.pool}") has ${runsc}, but gVisor must only be on pools ${g.pools.join(', ')}`, gardener.gvisorOnPool);
  });
  ctx.test(n, `(outside the gVisor pools) does not declare handler "${g.handler}" in config.toml`, async () => {
    const rt = runtimeTable(await containerdConfig(n), g.handler);
    check(!rt.entry, `${n.paths.containerdConfig} on ${n.name} (pool "${n.pool}") declares runtime "${g.handler}" at [${rt.path}], but it is outside the gVisor pools`, gardener.gvisorOnPool);
  });
  ctx.test(n, `(outside the gVisor pools) containerd's CRI does not serve handler "${g.handler}"`, async () => {
    const handlers = await (await ctx.cri(n)).runtimeHandlers();
    check(!handlers[g.handler], `containerd on ${n.name} (pool "${n.pool}") serves handler "${g.handler}", but it is outside the gVisor pools`, gardener.gvisorOnPool);
  });
});

// image-builder's containerd customizations go into every node's config.toml, gVisor pool or not.
const { imagePullProgressTimeout: timeout, additionalSettings: extra } = ctx.config.containerd;
if (timeout || extra?.trim()) {
  ctx.eachNode(ctx.nodes, (n) => {
    if (timeout) {
      ctx.test(n, `config.toml sets image_pull_progress_timeout = "${timeout}"`, async () => {
        const cfg = await containerdConfig(n);
        const version = gardener.configVersion(cfg);
        const path = version && imageBuilder.imagePullProgressTimeoutPath(version);
        check(path, `${n.paths.containerdConfig} on ${n.name} has config version ${String(cfg.version ?? 1)}, which has no image_pull_progress_timeout (expected version 2 or 3)`, imageBuilder.imagePullProgressTimeoutPath);
        const found = imageBuilder.imagePullProgressTimeoutIn(cfg, version);
        check(found === timeout, `${n.paths.containerdConfig} on ${n.name} sets ${path.join('.')} = "${String(found ?? '(unset)')}", expected "${timeout}"`, imageBuilder.imagePullProgressTimeoutPath);
      });
    }
    if (extra?.trim()) {
      ctx.test(n, 'config.toml carries containerd.additionalSettings', async () => {
        const missing = imageBuilder.additionalSettingsApplied(await containerdConfig(n), parseTomlFile(extra, 'containerd.additionalSettings', 'the config'));
        // Key paths only: the values stay out of the message (settings may hold credentials); the failed check attaches the file, redacted.
        check(missing.length === 0, `${n.paths.containerdConfig} on ${n.name} does not carry containerd.additionalSettings at ${missing.join(', ')}`, imageBuilder.additionalSettingsApplied);
      });
    }
  });
}
