import { afterAll } from 'vitest';
import { readNodeFile, type NodeAccess } from '../../harness/node.ts';
import { parseNofile, parseSystemdLimit } from '../../harness/probes.ts';
import { SuiteContext, check } from '../context.ts';
import { imageBuilder, nodeOsFamily } from '../spec/index.ts';

// image-builder caps containerd's LimitNOFILE at 1048576 with a systemd drop-in on Flatcar and
// Azure Linux / CBL-Mariner, elsewhere only when containerd_enable_limit_no_file is set. Check the
// file is exactly where the rule says, that systemd applies it, and that pods inherit it.

const ctx = new SuiteContext('limit-nofile');
const CONTAINERD_PID = 'for p in $(pidof containerd); do [ "$(readlink /proc/$p/ns/mnt)" = "$(readlink /proc/self/ns/mnt)" ] && echo $p && break; done';
afterAll(() => ctx.close());
const enable = ctx.config.containerd.enableLimitNoFile;
const rule = imageBuilder.limitNofileDropIn;

/** What the suite itself reads off the node: its OS family (configured, else its os-release) and whether systemd runs containerd. */
async function nodeFacts(node: NodeAccess): Promise<{ osFamily: string; systemd: boolean }> {
  const osRelease = (await readNodeFile(node, '/etc/os-release')) ?? (await readNodeFile(node, '/usr/lib/os-release')) ?? '';
  const r = await node.exec('[ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && systemctl cat containerd >/dev/null 2>&1');
  return { osFamily: nodeOsFamily(node.config.osFamily, osRelease), systemd: r.code === 0 };
}

ctx.eachNode(ctx.nodes, (n) => {
  const file = imageBuilder.limitNofileFile(n.paths.systemdUnitDir);
  const dropIn = file.path;
  const LIMIT_NOFILE = file.limitNofile;
  let factsP: ReturnType<typeof nodeFacts> | undefined;
  const facts = () => (factsP ??= nodeFacts(ctx.node(n)));
  const expected = async () => rule((await facts()).osFamily, enable);

  ctx.test(n, `the LimitNOFILE drop-in ${dropIn} is present exactly where image-builder's rule puts it`, async () => {
    const f = await facts();
    const want = await expected();
    const text = await readNodeFile(ctx.node(n), dropIn);
    const why = `os family "${f.osFamily}", containerd.enableLimitNoFile ${enable}`;
    if (!want) {
      check(text === undefined, `${dropIn} exists on ${n.name}, but the drop-in belongs only on Flatcar / Azure Linux / Mariner or with containerd.enableLimitNoFile (${why})`, rule);
      return;
    }
    check(text !== undefined, `${dropIn} is missing on ${n.name}: expected LimitNOFILE=${LIMIT_NOFILE} (${why})`, rule);
    check(new RegExp(`^\\[${file.section}\\]`, 'm').test(text), `${dropIn} on ${n.name} has no [${file.section}] section`, imageBuilder.limitNofileFile);
    const value = parseSystemdLimit(text);
    check(value === LIMIT_NOFILE, `${dropIn} on ${n.name} sets LimitNOFILE=${value ?? '(nothing)'}, expected ${LIMIT_NOFILE}`, imageBuilder.limitNofileFile);
  });

  ctx.test(n, `systemd applies LimitNOFILE=${LIMIT_NOFILE} to containerd`, async (t) => {
    const f = await facts();
    if (!f.systemd) return t.skip(`systemd does not manage containerd on ${n.name}`);
    if (!(await expected())) return t.skip(`no drop-in is due on ${n.name} (os family "${f.osFamily}")`);
    const r = await ctx.node(n).exec('systemctl show containerd -p LimitNOFILE');
    const value = parseSystemdLimit(r.stdout);
    const shown = r.stdout.trim().replace(/^LimitNOFILE=/, '') || '(nothing)';
    check(value === LIMIT_NOFILE, `systemd on ${n.name} runs containerd with LimitNOFILE=${shown}, expected ${LIMIT_NOFILE} from ${dropIn} (was \`systemctl daemon-reload\` run?)`, imageBuilder.limitNofileFile);
  });

  ctx.test(n, "containerd's own open-file limit agrees with systemd's", async (t) => {
    const f = await facts();
    if (!f.systemd) return t.skip(`systemd does not manage containerd on ${n.name}`);
    const node = ctx.node(n);
    const show = parseSystemdLimit((await node.exec('systemctl show containerd -p LimitNOFILE')).stdout);
    const proc = parseNofile((await node.exec('cat /proc/"$(systemctl show containerd -p MainPID --value)"/limits')).stdout);
    check(proc, `cannot read containerd's /proc/<pid>/limits on ${n.name}`);
    const pid1 = parseNofile((await node.exec('cat /proc/1/limits')).stdout);
    // A container host (nspawn, a kind node) cannot raise a limit above its own hard limit.
    const ceiling = pid1 ? Math.min(show ?? Infinity, pid1.hard) : (show ?? Infinity);
    if (show !== undefined && ceiling < show) t.annotate(`containerd's LimitNOFILE=${show} is capped by the node's own hard limit ${ceiling}`);
    check(proc.soft === ceiling, `containerd on ${n.name} runs with an open-file limit of ${proc.soft}, expected ${ceiling} (systemd LimitNOFILE=${show})`);
  });

  if (ctx.gvisorNodes.includes(n)) {
    ctx.test(n, `a "${ctx.gvisor.handler}" pod sees containerd's open-file limit`, async () => {
      const node = ctx.node(n);
      // The containerd of this node: the one sharing our mount namespace (several nodes may share a PID namespace).
      const pid = (await node.exec(CONTAINERD_PID)).stdout.trim();
      check(pid, `no containerd process found on ${n.name}`);
      const proc = parseNofile((await node.exec(`cat /proc/${pid}/limits`)).stdout);
      check(proc, `cannot find containerd's open-file limit on ${n.name}`);
      const r = await ctx.oneShot(n, ctx.gvisor.handler, 'nofile', ['sh', '-c', 'ulimit -n']);
      await ctx.attach('ulimit -n in the pod', r.output);
      const inPod = r.output.trim() === 'unlimited' ? Infinity : Number(r.output.trim());
      check(inPod === proc.soft, `a "${ctx.gvisor.handler}" pod on ${n.name} sees an open-file limit of ${r.output.trim()}, but containerd runs with ${proc.soft}`);
    });
  }
});
