import { afterAll } from 'vitest';
import { InfrastructureError } from '../../harness/errors.ts';
import { readNodeFile, sh } from '../../harness/node.ts';
import { GVISOR_MODULE_VERSION } from '../../harness/versions.ts';
import { SuiteContext, check, warnOn } from '../context.ts';
import { cite, gardener, gvisor, imageBuilder, parseTomlFile, runscConfigOf, runtimeTable, tomlPath, type Toml } from '../spec/index.ts';
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

  // A build is labelled with the version it was built from (the pinned module for "latest"), also
  // when this run did not install it (--no-install): harness/versions.ts is where that pin lives.
  const pinned = ctx.plan.expectedVersion || (g.source.type === 'build' ? (g.version === 'latest' ? GVISOR_MODULE_VERSION : g.version) : '');
  const versionInputs = { configured: g.version, source: g.source.type, pinned };
  ctx.test(n, `runsc runs and reports version ${pinned || g.version}`, async () => {
    const r = await ctx.node(n).exec(`${sh(runsc)} --version`);
    check(r.code === 0, `\`${runsc} --version\` on ${n.name} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 300) || '(no output)'}`, gvisor.runscVersion);
    const first = r.stdout.split('\n')[0] ?? '';
    check(/^runsc version /.test(first), `\`${runsc} --version\` on ${n.name} printed "${first}", expected "runsc version …"`, gvisor.runscVersion);
    const reported = first.slice('runsc version '.length).trim();
    const v = gvisor.runscVersion(reported, versionInputs);
    check(v.ok, `runsc on ${n.name} reports version "${reported}", expected ${v.expected} (gvisor.version ${g.version}, source ${g.source.type})`, gvisor.runscVersion);
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
    for (const w of v.warnings) await warnOn(t, w);
    check(v.failures.length === 0, v.failures.join('; '));
  });

  if (g.shim === 'runsc') {
    ctx.test(n, `containerd-shim-runsc-v1 is installed at ${shim} and runs`, async () => {
      const r = await ctx.node(n).exec(`[ -x ${sh(shim)} ] && [ -f ${sh(shim)} ] && ${sh(shim)} -v`);
      check(r.code === 0, `containerd-shim-runsc-v1 is missing or broken on ${n.name}: expected an executable at ${shim} that answers -v (exit ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 200)})`, gardener.binaries);
    });
  
    ctx.test(n, 'containerd-shim-runsc-v1 run without arguments refuses to start: "shim namespace cannot be empty"', async () => {
      const want = gvisor.shimAnswer();
      // An empty environment and /: the shim must fail on its missing -namespace before it reads anything else.
      const r = await ctx.node(n).exec(`cd / && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin timeout 20 ${sh(shim)} </dev/null`);
      const said = (r.stderr || r.stdout).trim().split('\n').slice(-2).join(' | ').slice(0, 300) || '(nothing)';
      check(r.code === want.exitCode && r.stderr.includes(want.stderr), `${shim} on ${n.name} run without arguments exited ${r.code} saying "${said}", expected exit ${want.exitCode} with "${want.stderr}"`, gvisor.shimAnswer);
    });
  }

  const want = expectedRuntime(n);
  ctx.test(n, `config.toml declares runtime handler "${g.handler}" (${want.runtime_type})`, async () => {
    const cfg = await containerdConfig(n);
    const rt = runtimeTable(cfg, g.handler);
    check(rt.version, `${n.paths.containerdConfig} on ${n.name} has config version ${String(cfg.version)}, expected 1, 2 or 3`, gardener.configVersion);
    if (!rt.entry) {
      // Name the table that is there instead: a version-2 table in a version-3 file is silently ignored.
      const elsewhere = gardener.misplacedRuntimeTable(cfg, g.handler, rt.version);
      const found = elsewhere ? `; found [${tomlPath(elsewhere)}] instead, a table this containerd does not read for config version ${rt.version}` : '';
      check(false, `${n.paths.containerdConfig} on ${n.name} has no runtime "${g.handler}": expected a containerd.runtimes.${g.handler} table at [${rt.path}] (config version ${rt.version})${found}`, elsewhere ? gardener.misplacedRuntimeTable : gardener.runtimeTablePath);
    }
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

    ctx.test(n, 'runsc.toml holds only keys the extension writes', async (t) => {
      const text = await readNodeFile(ctx.node(n), n.paths.runscConfig);
      if (text === undefined) return t.skip(`${n.paths.runscConfig} does not exist on ${n.name} (the net-raw check fails for it)`);
      const extra = gardener.unexpectedRunscKeys(parseTomlFile(text, n.paths.runscConfig, n.name));
      const allowed = gardener.runscTomlKeys();
      check(extra.length === 0, `${n.paths.runscConfig} on ${n.name} sets ${extra.join(', ')}, which the extension does not write (expected only [${allowed.tables.join(', ')}] with ${allowed.runscConfig.join(', ')})`, gardener.runscTomlKeys);
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

// The containerd that serves this node's socket: the one sharing our mount namespace (several nodes may share a PID namespace).
const CONTAINERD_EXE = 'for p in $(pidof containerd); do [ "$(readlink /proc/$p/ns/mnt)" = "$(readlink /proc/self/ns/mnt)" ] && readlink /proc/$p/exe && break; done';

/**
 * containerd's own view of its configuration: `containerd config dump` of the running binary, which
 * merges config.toml's imports as the daemon does; with the binary's version.
 */
async function containerdView(n: (typeof ctx.nodes)[number]): Promise<{ version: string; dump: Toml }> {
  const node = ctx.node(n);
  const exe = (await node.exec(CONTAINERD_EXE)).stdout.trim().split('\n')[0];
  if (!exe) throw new InfrastructureError(`no containerd process found on ${n.name}: cannot ask it for its configuration`);
  const version = (await node.exec(`${sh(exe)} --version`)).stdout.trim().split(/\s+/)[2] ?? '';
  // stdout only: containerd logs its warnings (unknown keys) on stderr.
  const r = await node.exec(`${sh(exe)} --config ${sh(n.paths.containerdConfig)} config dump 2>/dev/null`);
  if (r.code !== 0) throw new InfrastructureError(`\`containerd config dump\` on ${n.name} exited ${r.code}`);
  return { version, dump: parseTomlFile(r.stdout, `containerd config dump (${n.paths.containerdConfig})`, n.name) };
}

/** Whether systemd runs containerd on the node (only then does a unit drop-in take effect). */
async function systemdRunsContainerd(n: (typeof ctx.nodes)[number]): Promise<boolean> {
  return (await ctx.node(n).exec('[ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && systemctl cat containerd >/dev/null 2>&1')).code === 0;
}

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

// image-builder parity: where the config follows image-builder's layout (handler "gvisor" in
// /usr/local/bin), the files its containerd role puts on every node, and its settings as
// containerd itself reads them.
if (imageBuilder.followsLayout(g)) {
  const imports = imageBuilder.configImports(extra);
  ctx.eachNode(ctx.nodes, (n) => {
    for (const d of imageBuilder.unitDropIns(n.paths.systemdUnitDir)) {
      ctx.test(n, `${d.path} sets ${d.key}=${d.value} (image-builder)`, async () => {
        const text = await readNodeFile(ctx.node(n), d.path);
        check(text !== undefined, `${d.path} is missing on ${n.name}: expected a [Service] drop-in with ${d.key}=${d.value}`, d);
        const value = new RegExp(`^\\s*${d.key}=(.*)$`, 'm').exec(text)?.[1]?.trim();
        check(/^\[Service\]/m.test(text) && value === d.value, `${d.path} on ${n.name} sets ${d.key}=${value ?? '(nothing)'}${/^\[Service\]/m.test(text) ? '' : ' outside a [Service] section'}, expected ${d.value}`, d);
        if (await systemdRunsContainerd(n)) {
          const shown = (await ctx.node(n).exec(`systemctl show containerd -p ${d.key} --value`)).stdout.trim();
          check(shown === d.value, `systemd on ${n.name} runs containerd with ${d.key}=${shown || '(nothing)'}, expected ${d.value} from ${d.path} (was \`systemctl daemon-reload\` run?)`, d);
        }
      });
    }
    if (imports) {
      ctx.test(n, `config.toml imports ${imports.join(', ')} (image-builder)`, async () => {
        const found = (await containerdConfig(n)).imports;
        const list = Array.isArray(found) ? found.map(String) : [];
        const missing = imports.filter((i) => !list.includes(i));
        check(missing.length === 0, `${n.paths.containerdConfig} on ${n.name} has imports = ${JSON.stringify(found ?? null)}, expected it to include ${missing.map((m) => JSON.stringify(m)).join(', ')}`, imageBuilder.configImports);
      });
    }
  });
}

// image-builder's settings in effect: what containerd itself reads (conf.d imports merged), not just the file.
if (timeout || extra?.trim()) {
  ctx.eachNode(ctx.nodes, (n) => {
    if (timeout) {
      ctx.test(n, `containerd itself reads image_pull_progress_timeout = "${timeout}"`, async (t) => {
        const view = await containerdView(n);
        if (imageBuilder.knowsImagePullProgressTimeout(view.version) === false) {
          // An older containerd ignores the key: the setting has no effect there, which the user should know.
          await warnOn(t, `containerd ${view.version} on ${n.name} predates image_pull_progress_timeout: containerd.imagePullProgressTimeout has no effect there${cite(imageBuilder.knowsImagePullProgressTimeout)}`);
          return;
        }
        const found = imageBuilder.imagePullProgressTimeoutInEffect(view.dump);
        check(found === timeout, `containerd ${view.version} on ${n.name} reads image_pull_progress_timeout = "${String(found ?? '(unset)')}" (\`containerd config dump\`, imports merged), expected "${timeout}": ${n.paths.containerdConfig} or a file it imports says otherwise`, imageBuilder.imagePullProgressTimeoutPath);
      });
    }
    if (extra?.trim()) {
      ctx.test(n, 'containerd itself reads containerd.additionalSettings', async () => {
        const view = await containerdView(n);
        const settings = parseTomlFile(extra, 'containerd.additionalSettings', 'the config');
        const fileVersion = gardener.configVersion(await containerdConfig(n));
        // A dump in another schema than the file (containerd 2 migrates version 2) has the plugins elsewhere: judge the rest.
        const comparable = view.dump.version === fileVersion ? settings : Object.fromEntries(Object.entries(settings).filter(([k]) => k !== 'plugins'));
        const missing = imageBuilder.additionalSettingsApplied(view.dump, comparable);
        check(missing.length === 0, `containerd ${view.version} on ${n.name} does not read containerd.additionalSettings at ${missing.join(', ')} (\`containerd config dump\`, imports merged): a file it imports overrides them, or containerd does not know them`, imageBuilder.additionalSettingsApplied);
      });
    }
  });
}
