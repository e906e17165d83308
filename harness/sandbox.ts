import { randomBytes } from 'node:crypto';
import { CriClient, CriError } from './cri.ts';
import { InfrastructureError } from './errors.ts';
import { readNodeFile, sh, type NodeAccess } from './node.ts';

// One-shot containers in a fresh pod sandbox: the node-level equivalent of `kubectl run --rm`.
// The check reads the container's own stdout (its CRI log file), not an exec: gVisor grants
// processes started by `runsc exec` capabilities the container's main process may not have.

export const RUN_LABEL = 'gvisor-e2e.dev/run-id';
export const MANAGED_LABEL = 'gvisor-e2e.dev/managed';

export interface OneShotOptions {
  handler: string;
  image: string;
  command: string[];
  /** A short name for the pod; a random suffix is added. */
  name: string;
  runId: string;
  podLogDir: string;
  timeoutMs: number;
  /** Extra capabilities / privileges are never needed by the checks; this stays least-privilege. */
}

export interface OneShotResult {
  podId: string;
  exitCode: number;
  /** The container's stdout+stderr, in order. */
  output: string;
  /** What containerd reports it ran the sandbox with (e.g. io.containerd.runsc.v1). */
  runtimeType: string;
  runtimeHandler: string;
  reason: string;
  /** Why the pod was more than least privilege ([] = it was not), for the report. */
  privileged: string[];
}

interface CriSecurity {
  linux?: {
    security_context?: {
      privileged?: boolean;
      no_new_privs?: boolean;
      namespace_options?: Record<string, string>;
      capabilities?: { add_capabilities?: string[] };
    };
  };
}

/** The CRI counterpart of kube.ts privilegeOf(): host namespaces, privileged, added capabilities, no no_new_privs. */
export function criPrivilegeOf(sandbox: CriSecurity, container: CriSecurity): string[] {
  const why: string[] = [];
  for (const [ns, mode] of Object.entries(sandbox.linux?.security_context?.namespace_options ?? {})) if (mode === 'NODE') why.push(`host ${ns} namespace`);
  if (sandbox.linux?.security_context?.privileged) why.push('privileged sandbox');
  const sc = container.linux?.security_context;
  if (sc?.privileged) why.push('privileged container');
  if (!sc?.no_new_privs) why.push('allows privilege escalation (no_new_privs unset)');
  if (sc?.capabilities?.add_capabilities?.length) why.push(`adds capabilities ${sc.capabilities.add_capabilities.join(', ')}`);
  return why;
}

/** Parses CRI log lines: "<RFC3339Nano> <stdout|stderr> <F|P> <text>"; P parts are joined. */
export function parseCriLog(text: string): string {
  let out = '';
  for (const line of text.split('\n')) {
    const m = /^\S+ (stdout|stderr) ([FP]) ?(.*)$/.exec(line);
    if (!m) continue;
    out += m[3] + (m[2] === 'F' ? '\n' : '');
  }
  return out;
}

export async function runOneShot(node: NodeAccess, cri: CriClient, o: OneShotOptions): Promise<OneShotResult> {
  const suffix = randomBytes(3).toString('hex');
  const podName = `${o.name}-${suffix}`;
  const logDir = `${o.podLogDir}/${podName}`;
  const labels = { [RUN_LABEL]: o.runId, [MANAGED_LABEL]: 'true' };
  const sandboxConfig = {
    metadata: { name: podName, namespace: 'gvisor-e2e', uid: `${o.runId}-${suffix}`, attempt: 0 },
    hostname: podName,
    log_directory: logDir,
    labels,
    linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
  };
  let podId: string | undefined;
  try {
    try {
      podId = await cri.runPodSandbox(sandboxConfig, o.handler);
    } catch (e) {
      if (e instanceof CriError) {
        // The runtime refused the handler or failed to start the sandbox: the node's answer, not ours.
        throw new SandboxStartError(o.handler, node.name, e.message);
      }
      throw e;
    }
    const ps = await cri.podSandboxStatus(podId);
    // containerd 1.x reports runtimeHandler at the top of the info; 2.x inside sandboxMetadata.
    const info = ps.info.info
      ? (JSON.parse(ps.info.info) as { runtimeHandler?: string; runtimeType?: string; sandboxMetadata?: { RuntimeHandler?: string } })
      : {};
    const containerConfig = {
      metadata: { name: 'main', attempt: 0 },
      image: { image: o.image },
      command: o.command,
      log_path: 'main.log',
      labels,
      linux: { security_context: { run_as_user: { value: 0 }, no_new_privs: true } },
    };
    const cid = await cri.createContainer(podId, containerConfig, sandboxConfig);
    await cri.startContainer(cid);
    const st = await cri.waitForExit(cid, `container ${podName}/main (${o.command.join(' ')}) to exit on ${node.name}`, o.timeoutMs);
    const log = await readNodeFile(node, `${logDir}/main.log`);
    // A log that cannot be read is not "the container printed nothing": the check could not see.
    if (log === undefined) throw new InfrastructureError(`cannot read the log of container ${podName}/main on ${node.name} (${logDir}/main.log)`);
    return {
      podId,
      exitCode: st.exit_code,
      output: parseCriLog(log),
      runtimeType: info.runtimeType ?? '',
      runtimeHandler: info.runtimeHandler ?? info.sandboxMetadata?.RuntimeHandler ?? '',
      reason: st.reason,
      privileged: criPrivilegeOf(sandboxConfig, containerConfig),
    };
  } finally {
    if (podId) {
      await cri.stopPodSandbox(podId).catch(() => undefined);
      await cri.removePodSandbox(podId).catch(() => undefined);
    }
    await node.exec(`rm -rf ${sh(logDir)}`).catch(() => undefined);
  }
}

/** containerd could not start a sandbox with this handler (unknown handler, runsc missing, …). */
export class SandboxStartError extends Error {
  override readonly name = 'SandboxStartError';
  constructor(handler: string, node: string, detail: string) {
    super(`could not start a pod sandbox with runtime handler "${handler}" on ${node}: ${detail}`);
  }
}

/** Removes every pod sandbox a run left behind on a node (after a crash, or from `down`). */
export async function removeLeftoverPods(cri: CriClient, runId?: string): Promise<number> {
  const pods = await cri.listPodSandboxes(runId ? { [RUN_LABEL]: runId } : { [MANAGED_LABEL]: 'true' });
  for (const p of pods) {
    await cri.stopPodSandbox(p.id).catch(() => undefined);
    await cri.removePodSandbox(p.id).catch(() => undefined);
  }
  return pods.length;
}
