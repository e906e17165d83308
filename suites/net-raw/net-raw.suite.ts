import { afterAll } from 'vitest';
import { readNodeFile } from '../../harness/node.ts';
import { NET_RAW_PROBE, parseNetRawProbe } from '../../harness/probes.ts';
import { SuiteContext, check } from '../context.ts';
import { gardener, parseTomlFile, runscConfigOf } from '../spec/index.ts';

// With net-raw off (gVisor's default) the sandboxed app has no CAP_NET_RAW, so ping cannot open
// its raw ICMP socket; with net-raw "true" it can. The probe is the container's own main process:
// processes started by `runsc exec` keep raw sockets whatever the flag says.

const ctx = new SuiteContext('net-raw');
afterAll(() => ctx.close());
const h = ctx.gvisor.handler;

ctx.eachNode(ctx.gvisorNodes, (n) => {
  const want = ctx.netRaw;
  ctx.test(n, want === 'true' ? 'raw sockets work in the sandbox (net-raw "true")' : 'raw sockets are refused in the sandbox (net-raw off)', async () => {
    const r = await ctx.oneShot(n, h, 'net-raw', NET_RAW_PROBE);
    await ctx.attach(`net-raw probe output (runtime ${r.runtimeType || 'unknown'})`, r.output);
    const p = parseNetRawProbe(r.output);
    check(p.gvisor, `the "${h}" pod on ${n.name} is not running under gVisor (runtime ${r.runtimeType || 'unknown'}), so net-raw cannot be judged: ${r.output.trim().slice(0, 200)}`);
    check(p.pingExit !== undefined, `the net-raw probe on ${n.name} did not finish: ${r.output.trim().slice(0, 300)}`);
    // Only for the message: a node reached through the API alone still gets its verdict from the pod.
    const onNode = await readNodeFile(ctx.node(n), n.paths.runscConfig).then(
      (t) => runscConfigOf(parseTomlFile(t ?? '', n.paths.runscConfig, n.name))['net-raw'] ?? '(unset)',
      (e: Error) => (e.name === 'NoNodeAccess' ? '(not readable without SSH)' : Promise.reject(e)),
    );
    if (want === 'true') {
      check(p.pingExit === 0 && p.received, `net-raw is configured "true" but ping in the sandbox on ${n.name} failed (exit ${p.pingExit}; ${n.paths.runscConfig} has net-raw = "${onNode}"): ${r.output.trim().slice(0, 300)}`, gardener.runscFlags);
    } else {
      check(p.pingExit !== 0 && p.refused, `net-raw is off but ping opened a raw socket in the sandbox on ${n.name} (exit ${p.pingExit}; ${n.paths.runscConfig} has net-raw = "${onNode}"): ${r.output.trim().slice(0, 300)}`, gardener.runscFlags);
    }
  });
});
