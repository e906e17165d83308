// After a failed or broken run, what an operator needs to see why, per node, under
// <run>/diagnostics/<node>/: containerd's and the kubelet's log tails, containerd's effective
// config and its config file, the CRI runtime status, runsc's debug logs (when debug-log is set), and the events and
// status of the pods the failing checks left. Everything is redacted; each file is also attached
// to the node's failed checks in the Allure results.
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { type Config, type NodeConfig, durationMs } from './config.ts';
import { CriClient } from './cri.ts';
import { log } from './log.ts';
import { mapLimit } from './map-limit.ts';
import { openNode, sh, type NodeAccess } from './node.ts';
import { redact } from './redact.ts';
import { RUN_LABEL } from './sandbox.ts';
import type { RunSummary } from './report.ts';
import type { RunDir } from './rundir.ts';

const TAIL = 200;

/**
 * The log of a daemon as this node keeps it: systemd's journal when a unit runs it, else the file its
 * stdout goes to (the daemon of *this* node: the one in the shell's mount namespace).
 */
export function daemonLogCommand(daemon: string, lines = TAIL): string {
  const d = sh(daemon);
  return [
    `if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && systemctl cat ${d} >/dev/null 2>&1; then journalctl -u ${d} -n ${lines} --no-pager; exit; fi`,
    'me=$(readlink /proc/self/ns/mnt)',
    // /proc, not pidof: minimal node images lack procps.
    `for p in $(grep -lx ${d} /proc/[0-9]*/comm 2>/dev/null | cut -d/ -f3); do [ "$(readlink /proc/$p/ns/mnt)" = "$me" ] || continue; f=$(readlink /proc/$p/fd/1); [ -f "$f" ] && { echo "# $f (pid $p)"; tail -n ${lines} "$f"; exit; }; done`,
    `echo "(no ${daemon} log found: no systemd unit, and no ${daemon} process of this node writing to a file)"`,
  ].join('\n');
}

/** containerd's config as it runs (defaults merged), else the file. */
export function effectiveConfigCommand(configPath: string): string {
  const c = sh(configPath);
  return `containerd --config ${c} config dump 2>/dev/null || { echo "# containerd config dump failed; the file ${configPath}:"; cat ${c}; }`;
}

/** The last runsc debug logs, when runsc.toml (or the config's flags) sets debug-log. */
export function runscDebugCommand(runscConfig: string, flagDir: string | undefined): string {
  const dir = flagDir ? sh(flagDir) : `"$(sed -n 's/^[[:space:]]*debug-log[[:space:]]*=[[:space:]]*"\\(.*\\)"/\\1/p' ${sh(runscConfig)} 2>/dev/null | head -1)"`;
  const off = `(debug is off: no debug-log in ${runscConfig})`;
  // debug-log may hold %ID%-style patterns: the directory is what comes before the first one.
  return [
    `d=${dir}; [ -n "$d" ] || { echo ${sh(off)}; exit 0; }`,
    'd=${d%%%*}; case "$d" in */) ;; *) d=$(dirname "$d");; esac',
    '[ -d "$d" ] || { echo "(debug-log directory $d does not exist on the node)"; exit 0; }',
    `find "$d" -type f -printf '%T@ %p\\n' | sort -rn | head -5 | cut -d' ' -f2- | while read -r f; do echo "===== $f"; tail -n ${TAIL} "$f"; done`,
  ].join('\n');
}

/** Nodes the failing checks name; a failure not tied to one node ("-", a suite or cluster check) takes every node. */
export function nodesToDiagnose(summary: RunSummary, nodes: NodeConfig[]): NodeConfig[] {
  const bad = summary.checks.filter((c) => c.state === 'failed' || c.state === 'broken');
  const names = new Set(bad.map((c) => c.node));
  const all = [...names].some((x) => !nodes.some((n) => n.name === x));
  return nodes.filter((n) => n.access.type !== 'api' && (all || names.has(n.name)));
}

async function gather(node: NodeAccess, n: NodeConfig, cfg: Config, timeoutMs: number): Promise<Record<string, string>> {
  // A node that cannot be reached for the first command is not asked the others (each would wait out its retries).
  let unreachable: string | undefined;
  const run = async (cmd: string) => {
    if (unreachable) return `(not collected: ${unreachable})`;
    try {
      const r = await node.exec(cmd, { timeoutMs });
      return `${r.stdout}${r.stderr ? `\n# stderr:\n${r.stderr}` : ''}${r.code ? `\n# exit ${r.code}` : ''}`;
    } catch (e) {
      unreachable = (e as Error).message;
      return `(not collected: ${unreachable})`;
    }
  };
  const files: Record<string, string> = {
    'containerd.log': await run(daemonLogCommand('containerd')),
    'kubelet.log': await run(daemonLogCommand('kubelet')),
    'containerd-config.toml': await run(effectiveConfigCommand(n.paths.containerdConfig)),
    // The file as written (comments, additional settings), which the effective config does not show.
    'config.toml': await run(`cat ${sh(n.paths.containerdConfig)}`),
    'runsc.toml': await run(`cat ${sh(n.paths.runscConfig)}`),
    'runsc-debug.log': await run(runscDebugCommand(n.paths.runscConfig, cfg.gvisor.configFlags['debug-log'])),
  };
  if (unreachable) files['cri-status.json'] = JSON.stringify({ error: `not collected: ${unreachable}` });
  else {
    try {
      const cri = await CriClient.connect(node, n.paths.containerdSocket, timeoutMs);
      try {
        files['cri-status.json'] = JSON.stringify({ status: await cri.status(), runtimeHandlers: await cri.runtimeHandlers() }, null, 2);
      } finally {
        cri.close();
      }
    } catch (e) {
      files['cri-status.json'] = JSON.stringify({ error: (e as Error).message });
    }
  }
  return files;
}

/** The events and status of the run's pods that did not succeed (their namespaces still exist only if a check left them). */
async function podDiagnostics(kubeconfig: string, runId: string): Promise<Record<string, string>> {
  const [kube, { CoreV1Api }] = await Promise.all([import('./kube.ts'), import('@kubernetes/client-node')]);
  const core = kube.kubeConfig(kubeconfig).makeApiClient(CoreV1Api);
  const pods = (await kube.api('listing pods', () => core.listPodForAllNamespaces({ labelSelector: `${RUN_LABEL}=${runId}` }))).items;
  const out: Record<string, string[]> = {};
  for (const p of pods.filter((x) => x.status?.phase !== 'Succeeded')) {
    const ns = p.metadata?.namespace ?? '';
    const events = (await kube.api('listing events', () => core.listNamespacedEvent({ namespace: ns, fieldSelector: `involvedObject.name=${p.metadata?.name}` }))).items;
    const status = JSON.stringify(p.status, null, 2);
    const lines = events.map((e) => `${e.lastTimestamp?.toISOString?.() ?? ''} ${e.type} ${e.reason}: ${e.message}`);
    (out[p.spec?.nodeName ?? '-'] ??= []).push(`## pod ${ns}/${p.metadata?.name}\n${status}\n## events\n${lines.join('\n') || '(none)'}`);
  }
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.join('\n\n')]));
}

/**
 * Collects diagnostics of the nodes the failing checks name into <run>/diagnostics/<node>/ and
 * attaches them to those checks' Allure results. Returns the directories, relative to the run.
 */
export async function collectDiagnostics(run: RunDir, cfg: Config, nodes: NodeConfig[], summary: RunSummary, kubeconfig?: string): Promise<string[]> {
  const targets = nodesToDiagnose(summary, nodes);
  const timeoutMs = durationMs(cfg.timeouts.command);
  const pods = kubeconfig ? await podDiagnostics(kubeconfig, summary.runId).catch((e: Error) => ({ '-': `(pods: ${e.message})` }) as Record<string, string>) : {};
  const dirs: string[] = [];
  await mapLimit(targets, 4, async (n) => {
    const node = openNode(n);
    try {
      const files = await gather(node, n, cfg, timeoutMs);
      files['pods.txt'] = pods[n.name] ?? '(no pod of this run left on the node; the checks remove theirs, their failure messages say how they ended)';
      const dir = run.diagnosticsOf(n.name);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), redact(text), { mode: 0o600 });
      dirs.push(relative(run.dir, dir));
      attachToAllure(run.allureResults, n.name, dir, Object.keys(files));
    } catch (e) {
      log('warn', `diagnostics of ${n.name}: ${(e as Error).message}`);
    } finally {
      await node.close();
    }
  });
  return dirs.sort();
}

/**
 * Adds the node's diagnostics as attachments of its failed results in allure-results. Not of broken
 * ones: a check that could not run learned nothing from the node's files, and every copy of them is
 * one more place a secret could leak (they stay, redacted, in diagnostics/<node>/).
 */
function attachToAllure(resultsDir: string, node: string, dir: string, names: string[]): void {
  if (!existsSync(resultsDir)) return;
  for (const f of readdirSync(resultsDir).filter((x) => x.endsWith('-result.json'))) {
    const path = join(resultsDir, f);
    const r = JSON.parse(readFileSync(path, 'utf8')) as { status?: string; parameters?: { name: string; value: string }[]; attachments?: { name: string; source: string; type: string }[] };
    if (r.status !== 'failed' || !r.parameters?.some((p) => p.name === 'node' && p.value === node)) continue;
    for (const name of names) {
      const source = `${randomUUID()}-attachment.txt`;
      writeFileSync(join(resultsDir, source), readFileSync(join(dir, name)));
      (r.attachments ??= []).push({ name: `diagnostics ${node}: ${name}`, source, type: 'text/plain' });
    }
    writeFileSync(path, JSON.stringify(r));
  }
}
