import * as allure from 'allure-js-commons';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { describe, it, TestRunner, type TestContext } from 'vitest';
import { dirname, join } from 'node:path';
import { CAPABILITY_NAMES, type Capabilities } from './capabilities.ts';
import { RunDir } from './rundir.ts';
import { redact, registerKnownSecrets } from './redact.ts';
import { type Config, type NodeConfig, type SuiteName, durationMs, SUITE_NEEDS } from './config.ts';
import { CriClient } from './cri.ts';
import { InfrastructureError } from './errors.ts';
// What the suites expect comes from the written spec, never from the installer's own rules.
import { NoNodeAccess, openNode, type NodeAccess } from './node.ts';
import { shQuote } from './shell.ts';
import { SandboxStartError, runOneShot, type OneShotResult } from './sandbox.ts';
// Types only: the Kubernetes client (~80 MB per process) is loaded when a run has a cluster API.
import type * as k8s from '@kubernetes/client-node';
import { randomBytes } from 'node:crypto';

// What a suite file sees: the run plan the CLI wrote, node access opened once per suite file,
// and small helpers that turn "what we expected / what we found / where" into one message.

export const PLAN_ENV = 'GVISOR_E2E_PLAN';

export interface RunPlan {
  runId: string;
  /** The run's directory is <reportsDir>/<runId> (harness/rundir.ts). */
  reportsDir: string;
  config: Config;
  /** The cluster's nodes as `up` resolved them (the local provider makes them). */
  nodes: NodeConfig[];
  image: { image: string; pause: string };
  /** What `runsc --version` must contain ('' = any). */
  expectedVersion: string;
  /** Admin kubeconfig when the cluster runs Kubernetes. */
  kubeconfig?: string;
  /** What the cluster offers (a suite that needs more skips itself, naming the capability). */
  capabilities: Capabilities;
}

export function loadPlan(): RunPlan {
  const path = process.env[PLAN_ENV];
  if (!path) throw new InfrastructureError(`${PLAN_ENV} is not set: suites run through \`gvisor-e2e run\`, not on their own`);
  return JSON.parse(readFileSync(path, 'utf8')) as RunPlan;
}

/** A failed expectation about the node under test (not an infrastructure problem). */
export class CheckFailed extends Error {
  override readonly name = 'AssertionError';
}

/** Fails the check with `message` (suites/context.ts adds where upstream states the rule). */
export function check(ok: unknown, message: string): asserts ok {
  if (!ok) throw new CheckFailed(message);
}

/** Annotation type under which each pod a check created travels to the report (see report.ts). */
export const POD_ANNOTATION = 'gvisor-e2e.pod';

export interface PodRecord {
  pod: string;
  node: string;
  handler: string;
  /** Why it is more than least privilege; [] = it is not. */
  privileged: string[];
}

/** Annotation type of a warning: the check passes, and the report lists it under "Warnings". */
export const WARNING_ANNOTATION = 'gvisor-e2e.warning';

/** Warns in the report from the running check (it does not change the check's verdict). */
export async function warn(message: string): Promise<void> {
  await TestRunner.getCurrentTest()?.context.annotate(redact(message), WARNING_ANNOTATION);
}

/** Records a pod the running check created, so the report can list pods and name privileged ones. */
export async function recordPod(r: PodRecord): Promise<void> {
  await TestRunner.getCurrentTest()?.context.annotate(JSON.stringify(r), POD_ANNOTATION);
}

/**
 * The framework side of a suite. What the suite expects (which pools get gVisor, net-raw) is not the
 * harness's to say: suites/context.ts answers it from the conformance spec.
 */
export abstract class SuiteContext {
  private access = new Map<string, NodeAccess>();
  private cris = new Map<string, Promise<CriClient>>();
  readonly plan: RunPlan;

  constructor(
    readonly suite: string,
    plan = loadPlan(),
  ) {
    this.plan = plan;
    // Workers have their own redaction state: teach it the same secrets the CLI knows.
    registerKnownSecrets(plan.nodes.flatMap((n) => (n.access.type === 'ssh' ? [n.access.privateKeyPath] : [])), plan.kubeconfig ? [plan.kubeconfig] : []);
  }

  get config(): Config {
    return this.plan.config;
  }

  /**
   * Why this suite cannot run on this cluster (a capability it needs and the provider does not
   * offer), or undefined. Its checks are then reported as skipped with this reason.
   */
  get lacking(): string | undefined {
    const missing = (SUITE_NEEDS[this.suite as SuiteName] ?? []).filter((c) => !this.plan.capabilities[c]);
    return missing.length ? `needs ${missing.map((c) => CAPABILITY_NAMES[c]).join(' and ')}, which this cluster does not offer` : undefined;
  }
  get gvisor() {
    return this.plan.config.gvisor;
  }
  get nodes(): NodeConfig[] {
    return this.plan.nodes;
  }
  /** Whether nodes of `pool` run gVisor. */
  protected abstract onGVisorPool(pool: string): boolean;
  /** net-raw as the sandbox should have it. */
  abstract get netRaw(): 'true' | 'false';

  get gvisorNodes(): NodeConfig[] {
    return this.plan.nodes.filter((n) => this.onGVisorPool(n.pool));
  }
  get otherNodes(): NodeConfig[] {
    return this.plan.nodes.filter((n) => !this.onGVisorPool(n.pool));
  }

  node(n: NodeConfig): NodeAccess {
    let a = this.access.get(n.name);
    if (!a) {
      a = openNode(n);
      this.access.set(n.name, a);
    }
    return a;
  }

  cri(n: NodeConfig): Promise<CriClient> {
    let c = this.cris.get(n.name);
    if (!c) {
      c = CriClient.connect(this.node(n), n.paths.containerdSocket, durationMs(this.config.timeouts.command));
      this.cris.set(n.name, c);
    }
    return c;
  }

  /**
   * One describe block per node, titled with the node's name (the report groups by it). The blocks
   * run concurrently, at most `concurrency.nodes` at a time (vitest's maxConcurrency).
   */
  eachNode(nodes: NodeConfig[], fn: (n: NodeConfig) => void): void {
    describe.concurrent.each(nodes.map((n) => [n.name, n] as const))('%s', (_name, n) => fn(n));
  }

  /**
   * Declares one check on one node: an `it` whose Allure result carries the suite, node, pool and
   * gVisor settings, the commands it ran (redacted), and on failure the node's actual files.
   */
  test(n: NodeConfig, title: string, fn: (t: TestContext) => Promise<void>): void {
    // One node's checks run in order (they share its connection and transcript); nodes run side
    // by side (see eachNode).
    it.sequential(title, async (t) => {
      const node = this.node(n);
      const mark = node.transcript.length;
      await this.labels(n.name, { node: n.name, pool: n.pool });
      try {
        await fn(t);
      } catch (e) {
        // A node reached only through the API (an existing cluster without SSH): the check cannot be asked there.
        if (e instanceof NoNodeAccess || (e as Error).name === 'NoNodeAccess') return t.skip((e as Error).message);
        // The node's files are evidence for a wrong answer only: a broken check (SSH, CRI, a
        // timeout) learned nothing from them, and each copy is one more place a secret could leak.
        if (e instanceof CheckFailed || e instanceof SandboxStartError) await this.attachNodeFiles(n).catch(() => undefined);
        throw e;
      } finally {
        const cmds = node.transcript.slice(mark);
        if (cmds.length > 0) await this.attach('commands run on the node', JSON.stringify(cmds, null, 2), 'application/json');
      }
    });
  }

  /**
   * Declares one cluster-level check (through the Kubernetes API, no one node): an `it` with the
   * same Allure labels as `test`, sub-suite `subSuite` (default "cluster"), so the report groups it
   * under this suite and gives it the suite's page.
   */
  clusterTest(title: string, fn: (t: TestContext) => Promise<void>, subSuite = 'cluster'): void {
    it.sequential(title, async (t) => {
      await this.labels(subSuite, { 'gVisor pools': this.gvisor.pools.join(', ') });
      await fn(t);
    });
  }

  /** The Allure labels and parameters every check of this suite carries. */
  private async labels(subSuite: string, params: Record<string, string>): Promise<void> {
    await allure.epic('gVisor node conformance');
    await allure.feature(this.suite);
    await allure.suite(this.suite);
    await allure.subSuite(subSuite);
    await allure.parameter('cluster', this.config.cluster.name);
    for (const [k, v] of Object.entries(params)) await allure.parameter(k, v);
    await allure.parameter('gVisor version', this.plan.expectedVersion || this.gvisor.version);
    await allure.parameter('handler', this.gvisor.handler);
    await allure.parameter('net-raw', this.netRaw);
  }

  /** Evidence for the report (redacted). */
  async attach(name: string, content: string, type = 'text/plain'): Promise<void> {
    await allure.attachment(name, redact(content), type);
  }

  /** The node's actual containerd and gVisor files, attached when a check fails. */
  private async attachNodeFiles(n: NodeConfig): Promise<void> {
    const node = this.node(n);
    const files = [n.paths.containerdConfig, n.paths.runscConfig, `${n.paths.systemdUnitDir}/containerd.service.d/limit-nofile.conf`];
    for (const f of files) {
      const r = await node.exec(`cat ${shQuote(f)}`);
      await this.attach(`${n.name}:${f}`, r.code === 0 ? r.stdout : `(absent: ${r.stderr.trim()})`);
    }
  }

  private kubeP?: Promise<{ kube: typeof import('./kube.ts'); kc: k8s.KubeConfig; core: k8s.CoreV1Api; nodeApi: k8s.NodeV1Api; registered: Set<string> }>;
  private nsP?: Promise<string>;

  /** The API, when node `n` is a kubelet's node: then its pods must come through the API (a kubelet kills pods it does not know). */
  private async kubeFor(n: NodeConfig) {
    if (!this.plan.kubeconfig) return undefined;
    this.kubeP ??= (async () => {
      const [kube, { CoreV1Api, NodeV1Api }] = await Promise.all([import('./kube.ts'), import('@kubernetes/client-node')]);
      const kc = kube.kubeConfig(this.plan.kubeconfig!);
      const core = kc.makeApiClient(CoreV1Api);
      const registered = new Set((await kube.api('listing nodes', () => core.listNode())).items.map((x) => x.metadata?.name ?? ''));
      return { kube, kc, core, nodeApi: kc.makeApiClient(NodeV1Api), registered };
    })();
    const k = await this.kubeP;
    return k.registered.has(n.name) ? k : undefined;
  }

  /** This suite's namespace (created once, labelled, deleted by close()). */
  private namespace(kube: typeof import('./kube.ts'), core: k8s.CoreV1Api): Promise<string> {
    this.nsP ??= (async () => {
      const ns = `gvisor-e2e-${this.plan.runId}-${this.suite}`.toLowerCase().slice(0, 63).replace(/-+$/, '');
      return kube.createRunNamespace(core, ns, this.plan.runId);
    })();
    return this.nsP;
  }

  /** Runs `command` as the main process of a fresh pod under `handler` on node `n`. */
  async oneShot(n: NodeConfig, handler: string, name: string, command: string[]): Promise<OneShotResult> {
    const k = await this.kubeFor(n);
    if (k) {
      let runtimeClassName: string | undefined;
      if (handler !== 'runc') {
        const classes = await k.kube.api('listing RuntimeClasses', () => k.nodeApi.listRuntimeClass());
        runtimeClassName = classes.items.find((c) => c.handler === handler)?.metadata?.name;
        if (!runtimeClassName) throw new SandboxStartError(handler, n.name, `no RuntimeClass in the cluster has handler "${handler}"`);
      }
      const ns = await this.namespace(k.kube, k.core);
      const podName = `${name}-${randomBytes(3).toString('hex')}`;
      const spec = k.kube.testPod({ name: podName, namespace: ns, runId: this.plan.runId, image: this.plan.image.image, command }, { nodeName: n.name, runtimeClassName });
      const privileged = k.kube.privilegeOf(spec.spec);
      await recordPod({ pod: `${ns}/${podName}`, node: n.name, handler, privileged });
      const r = await k.kube.runPodToCompletion(k.kc, spec, durationMs(this.config.timeouts.container) * 2, handler);
      return { podId: r.pod.metadata?.uid ?? '', exitCode: r.exitCode, output: r.logs, runtimeType: '', runtimeHandler: handler, reason: r.pod.status?.reason ?? '', privileged };
    }
    const r = await runOneShot(this.node(n), await this.cri(n), {
      handler,
      image: this.plan.image.image,
      command,
      name,
      runId: this.plan.runId,
      podLogDir: n.paths.podLogDir,
      timeoutMs: durationMs(this.config.timeouts.container),
    });
    await recordPod({ pod: `cri:${r.podId.slice(0, 12)}`, node: n.name, handler, privileged: r.privileged });
    return r;
  }

  /** Closes connections and keeps every command run on the nodes (redacted) as evidence. */
  async close(): Promise<void> {
    if (this.nsP && this.kubeP) {
      const ns = await this.nsP.catch(() => undefined);
      const { kube, core } = await this.kubeP;
      // Retried like every API call: an API server restarting at this moment must not leak the namespace.
      if (ns) await kube.api(`deleting namespace ${ns}`, () => core.deleteNamespace({ name: ns })).catch((e: Error) => console.error(e.message));
    }
    const transcript = [...this.access.values()].flatMap((a) => a.transcript);
    if (transcript.length > 0) {
      const file = new RunDir(this.plan.reportsDir, this.plan.runId).transcriptOf(this.suite);
      try {
        mkdirSync(dirname(file), { recursive: true });
        writeFileSync(file, redact(JSON.stringify(transcript, null, 2)));
      } catch (e) {
        // A full disk must be named with its path, not as a bare "ENOSPC … write".
        throw new InfrastructureError(`cannot write ${file}: ${(e as Error).message}`);
      }
    }
    for (const c of this.cris.values()) (await c.catch(() => undefined))?.close();
    for (const a of this.access.values()) await a.close();
    this.cris.clear();
    this.access.clear();
  }
}
