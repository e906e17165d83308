import { parse as parseToml } from 'smol-toml';
import { afterAll } from 'vitest';
import { readNodeFile, sh } from '../../harness/node.ts';
import { findRuntime, parseRunscToml, type TomlTable } from '../../harness/render.ts';
import { SuiteContext, check } from '../../harness/suite.ts';

// Each describe block is one node (its title is the node name, which the report uses).
// runsc and its shim are where the config says, run, report the expected version, and
// containerd really serves the handler — on the gVisor pool's nodes, and nowhere else.

const ctx = new SuiteContext('runsc-installation');
afterAll(() => ctx.close());
const g = ctx.gvisor;
const runsc = `${g.binaryPath}/runsc`;
const shim = `${g.binaryPath}/containerd-shim-runsc-v1`;
const expectedType = g.shim === 'runsc' ? 'io.containerd.runsc.v1' : 'io.containerd.runc.v2';

async function containerdConfig(n: (typeof ctx.gvisorNodes)[number]): Promise<TomlTable> {
  const text = await readNodeFile(ctx.node(n), n.paths.containerdConfig);
  check(text !== undefined, `${n.paths.containerdConfig} does not exist on ${n.name}`);
  try {
    return parseToml(text) as TomlTable;
  } catch (e) {
    throw new Error(`${n.paths.containerdConfig} on ${n.name} is not valid TOML: ${(e as Error).message.split('\n')[0]}`);
  }
}

ctx.eachNode(ctx.gvisorNodes, (n) => {
  ctx.test(n, `runsc is installed at ${runsc} and executable`, async () => {
    // The mode and type go into the message: "not executable" alone does not say what is there instead.
    const r = await ctx.node(n).exec(
      `if [ ! -e ${sh(runsc)} ]; then echo missing; elif [ ! -x ${sh(runsc)} ] || [ -d ${sh(runsc)} ]; then echo "not-executable $(stat -c '%A %a %F' ${sh(runsc)})"; else echo ok; fi`,
    );
    const out = r.stdout.trim();
    check(out !== 'missing', `runsc is missing on ${n.name}: expected an executable at ${runsc}`);
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
    const r = await ctx.node(n).exec(`ldd ${sh(runsc)} 2>&1 || true`);
    const missing = r.stdout.split('\n').filter((l) => /not found/.test(l));
    check(missing.length === 0, `runsc on ${n.name} needs files that are not installed: ${missing.join('; ')}`);
  });

  if (g.shim === 'runsc') {
    ctx.test(n, `containerd-shim-runsc-v1 is installed at ${shim} and runs`, async () => {
      const r = await ctx.node(n).exec(`[ -x ${sh(shim)} ] && [ -f ${sh(shim)} ] && ${sh(shim)} -v`);
      check(r.code === 0, `containerd-shim-runsc-v1 is missing or broken on ${n.name}: expected an executable at ${shim} that answers -v (exit ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 200)})`);
    });
  }

  ctx.test(n, `config.toml declares runtime handler "${g.handler}" (${expectedType})`, async () => {
    const cfg = await containerdConfig(n);
    const rt = findRuntime(cfg, g.handler);
    check(rt, `${n.paths.containerdConfig} on ${n.name} has no runtime "${g.handler}": expected a containerd.runtimes.${g.handler} table`);
    check(rt.runtime_type === expectedType, `runtime "${g.handler}" on ${n.name} has runtime_type "${String(rt.runtime_type)}", expected "${expectedType}"`);
    const opts = (rt.options ?? {}) as TomlTable;
    if (g.shim === 'runsc') {
      check(opts.ConfigPath === n.paths.runscConfig, `runtime "${g.handler}" on ${n.name} has options.ConfigPath "${String(opts.ConfigPath)}", expected "${n.paths.runscConfig}"`);
    } else {
      check(opts.BinaryName === runsc, `runtime "${g.handler}" on ${n.name} has options.BinaryName "${String(opts.BinaryName)}", expected "${runsc}"`);
    }
  });

  if (g.shim === 'runsc') {
    ctx.test(n, `runsc.toml sets net-raw = "${ctx.netRaw}"`, async () => {
      const text = await readNodeFile(ctx.node(n), n.paths.runscConfig);
      check(text !== undefined, `${n.paths.runscConfig} does not exist on ${n.name}`);
      const flags = parseRunscToml(text);
      check(flags['net-raw'] === ctx.netRaw, `${n.paths.runscConfig} on ${n.name} sets net-raw = "${flags['net-raw'] ?? '(unset)'}", expected "${ctx.netRaw}"`);
    });
  }

  ctx.test(n, `containerd's CRI serves handler "${g.handler}"`, async () => {
    const handlers = await (await ctx.cri(n)).runtimeHandlers();
    const rt = handlers[g.handler];
    check(rt, `containerd on ${n.name} does not serve runtime handler "${g.handler}" (it serves: ${Object.keys(handlers).join(', ') || 'none'})`);
    check(rt.runtimeType === expectedType, `containerd on ${n.name} serves "${g.handler}" with runtime type "${rt.runtimeType}", expected "${expectedType}"`);
  });
});

ctx.eachNode(ctx.otherNodes, (n) => {
  ctx.test(n, `(outside the gVisor pools) has no runsc at ${runsc}`, async () => {
    const r = await ctx.node(n).exec(`[ -e ${sh(runsc)} ]`);
    check(r.code !== 0, `${n.name} (pool "${n.pool}") has ${runsc}, but gVisor must only be on pools ${g.pools.join(', ')}`);
  });
  ctx.test(n, `(outside the gVisor pools) does not declare handler "${g.handler}" in config.toml`, async () => {
    const cfg = await containerdConfig(n);
    check(!findRuntime(cfg, g.handler), `${n.paths.containerdConfig} on ${n.name} (pool "${n.pool}") declares runtime "${g.handler}", but it is outside the gVisor pools`);
  });
  ctx.test(n, `(outside the gVisor pools) containerd's CRI does not serve handler "${g.handler}"`, async () => {
    const handlers = await (await ctx.cri(n)).runtimeHandlers();
    check(!handlers[g.handler], `containerd on ${n.name} (pool "${n.pool}") serves handler "${g.handler}", but it is outside the gVisor pools`);
  });
});
