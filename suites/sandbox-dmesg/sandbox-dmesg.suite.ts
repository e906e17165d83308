import { afterAll } from 'vitest';
import { SuiteContext, check } from '../context.ts';
import { gardener, imageBuilder } from '../spec/index.ts';

// gVisor's Sentry prints its own boot log to the sandbox's dmesg ("Starting gVisor..." …
// "Ready!"). A runc container sees the host kernel's log, or is refused; never that log.

const ctx = new SuiteContext('sandbox-dmesg');
afterAll(() => ctx.close());
const h = ctx.gvisor.handler;

ctx.eachNode(ctx.gvisorNodes, (n) => {
  ctx.test(n, `dmesg in a "${h}" container shows the gVisor boot log ending in "Ready!"`, async () => {
    const r = await ctx.oneShot(n, h, 'dmesg-gvisor', ['dmesg']);
    await ctx.attach(`dmesg in a "${h}" pod (runtime ${r.runtimeType || 'unknown'})`, r.output);
    const log = imageBuilder.sandboxBootLog(r.output);
    const excerpt = log.lines.slice(-4).join(' | ') || '(no output)';
    check(log.starts, `dmesg in a "${h}" pod on ${n.name} (runtime ${r.runtimeType || 'unknown'}) does not show "Starting gVisor...": got ${excerpt}`, imageBuilder.sandboxBootLog);
    check(log.ready, `the gVisor boot log on ${n.name} does not end in "Ready!": last lines ${excerpt}`, imageBuilder.sandboxBootLog);
    // Gardener's own integration test expects exactly one line naming gVisor.
    const lines = gardener.dmesgGVisorLines(r.output);
    check(lines.count === lines.expected, `dmesg on ${n.name} has ${lines.count} lines mentioning gVisor, expected exactly ${lines.expected}`, gardener.dmesgGVisorLines);
    check(r.exitCode === 0, `dmesg in the "${h}" pod on ${n.name} exited ${r.exitCode}`);
  });

  ctx.test(n, 'dmesg in a runc container does not show the gVisor boot log', async () => {
    const r = await ctx.oneShot(n, 'runc', 'dmesg-runc', ['dmesg']);
    await ctx.attach(`dmesg in a runc pod (runtime ${r.runtimeType || 'unknown'})`, r.output);
    const log = imageBuilder.sandboxBootLog(r.output);
    check(!log.starts, `a runc pod on ${n.name} printed the gVisor boot log: the "runc" handler is running gVisor (runtime ${r.runtimeType})`, imageBuilder.sandboxBootLog);
  });
});
