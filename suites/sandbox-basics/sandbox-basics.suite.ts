// sandbox-basics: what any container expects of its sandbox, under gVisor — its log read back, its pod files, HOME, its pod IP answering another pod.
import * as k8s from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { InfrastructureError } from '../../harness/errors.ts';
import { api, createRunNamespace, eventsOf, execInPod, kubeConfig, privilegeOf, runPodToCompletion, sandboxRefusal, testPod, watchPod } from '../../harness/kube.ts';
import { SandboxStartError } from '../../harness/sandbox.ts';
import { SuiteContext, check, recordPod } from '../context.ts';
import { kubernetes } from '../spec/index.ts';

// Node-level checks start one-shot containers under the handler (over the CRI, or as pods pinned to
// the node where a kubelet runs it). The exec and network checks need a long-lived pod and a second
// pod: they run through the Kubernetes API, in a namespace of their own, deleted afterwards.

const ctx = new SuiteContext('sandbox-basics');
afterAll(() => ctx.close());
const h = ctx.gvisor.handler;

ctx.eachNode(ctx.gvisorNodes, (n) => {
  ctx.test(n, `"echo hello" in a "${h}" container is read back from its log`, async () => {
    const r = await ctx.oneShot(n, h, 'echo', ['echo', 'hello']);
    const want = kubernetes.logReadBack('hello');
    check(r.output === want, `the log of "echo hello" in a "${h}" container on ${n.name} reads ${JSON.stringify(r.output.slice(0, 200))}, expected ${JSON.stringify(want)} (exit ${r.exitCode})`, kubernetes.logReadBack);
  });

  ctx.test(n, `a "${h}" container has /etc/hosts and /etc/resolv.conf`, async () => {
    const files = kubernetes.podNetworkFiles();
    const r = await ctx.oneShot(n, h, 'etc-files', ['sh', '-c', `for f in ${files.join(' ')}; do if [ -f "$f" ]; then echo "present $f"; else echo "missing $f"; fi; done`]);
    await ctx.attach('the pod files', r.output);
    const missing = files.filter((f) => !r.output.split('\n').includes(`present ${f}`));
    check(missing.length === 0, `a "${h}" container on ${n.name} has no ${missing.join(' and ')} (it said: ${r.output.trim().replace(/\n/g, '; ').slice(0, 200) || 'nothing'})`, kubernetes.podNetworkFiles);
  });

  ctx.test(n, `HOME is ${kubernetes.homeOfRoot()} in a "${h}" container`, async () => {
    const r = await ctx.oneShot(n, h, 'home', ['sh', '-c', 'echo "HOME=${HOME-(unset)}"']);
    const home = /^HOME=(.*)$/m.exec(r.output)?.[1];
    check(home === kubernetes.homeOfRoot(), `HOME in a "${h}" container on ${n.name} is "${home ?? r.output.trim().slice(0, 100)}", expected "${kubernetes.homeOfRoot()}" (root's home in the image's /etc/passwd)`, kubernetes.homeOfRoot);
  });
});

describe('cluster', () => {
  const kubeconfig = ctx.plan.kubeconfig;
  if (!ctx.plan.capabilities.kubernetesApi || !kubeconfig) {
    it.skip('an exec and a second pod need a Kubernetes API, which this cluster does not offer', () => undefined);
    return;
  }
  const kc = kubeConfig(kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const ns = `gvisor-e2e-${ctx.plan.runId}-basics`.toLowerCase().slice(0, 63).replace(/-+$/, '');
  const rc = ctx.gvisor.runtimeClassName;
  const timeoutMs = 120_000;
  const PAGE = 'gvisor-e2e sandbox-basics';
  let server: Promise<k8s.V1Pod> | undefined;

  beforeAll(async () => {
    await createRunNamespace(core, ns, ctx.plan.runId);
  });
  afterAll(async () => {
    await api(`deleting namespace ${ns}`, () => core.deleteNamespace({ name: ns })).catch((e: Error) => console.error(e.message));
  });

  const pod = (name: string, command: string[], spec: Partial<k8s.V1PodSpec> = {}) => testPod({ name, namespace: ns, runId: ctx.plan.runId, image: ctx.plan.image.image, command }, spec);
  const record = (p: k8s.V1Pod, node: string) => recordPod({ pod: `${ns}/${p.metadata!.name}`, node, handler: p.spec?.runtimeClassName ?? 'runc', privileged: privilegeOf(p.spec) });

  /** A long-lived gVisor pod serving one page over HTTP on port 8080 (busybox httpd), once it runs and has an IP. */
  function serverPod(): Promise<k8s.V1Pod> {
    // Once: both checks share the pod, and a pod that could not start fails both at once.
    server ??= startServer();
    return server;
  }
  async function startServer(): Promise<k8s.V1Pod> {
    const p = pod('basics-server', ['sh', '-c', `mkdir -p /tmp/www && echo '${PAGE}' > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www`], { runtimeClassName: rc });
    await record(p, '(scheduler)');
    await api(`creating pod ${ns}/basics-server`, () => core.createNamespacedPod({ namespace: ns, body: p }), { created: true });
    return watchPod(kc, ns, 'basics-server', () => `pod ${ns}/basics-server (runtime class ${rc}) to run with an IP`, timeoutMs, async (x) => {
      if (x.status?.phase === 'Failed' || x.status?.phase === 'Succeeded') throw new InfrastructureError(`pod ${ns}/basics-server ended (${x.status.phase}) instead of serving`);
      if (x.status?.phase === 'Pending' && x.spec?.nodeName) {
        // The node's runtime refused the sandbox: its answer, as for every other pod of the suites.
        const refused = sandboxRefusal(await eventsOf(core, ns, 'basics-server'));
        if (refused?.infrastructure) throw new InfrastructureError(`pod ${ns}/basics-server on ${x.spec.nodeName}: ${refused.message}`);
        if (refused) throw new SandboxStartError(h, x.spec.nodeName, refused.message);
      }
      return x.status?.phase === 'Running' && Boolean(x.status.podIP);
    });
  }

  ctx.clusterTest(`HOME is ${kubernetes.homeOfRoot()} in an exec into a "${rc}" pod`, async () => {
    const s = await serverPod();
    const r = await execInPod(kc, ns, 'basics-server', 'main', ['sh', '-c', 'echo "HOME=${HOME-(unset)}"']);
    const home = /^HOME=(.*)$/m.exec(r.stdout)?.[1];
    check(r.code === 0 && home === kubernetes.homeOfRoot(), `HOME in an exec into the "${rc}" pod on ${s.spec?.nodeName} is "${home ?? (r.stdout + r.stderr).trim().slice(0, 100)}", expected "${kubernetes.homeOfRoot()}" (exit ${r.code})`, kubernetes.homeOfRoot);
  });

  ctx.clusterTest(`a "${rc}" pod's IP answers another pod`, async () => {
    const s = await serverPod();
    const ip = s.status!.podIP!;
    // The client runs under the default runtime on the same node: the pod network reaches into the sandbox's own stack.
    // nc, not wget: a static busybox's wget looks the "http" service up through glibc's NSS, which a static binary cannot load.
    const client = pod('basics-client', ['sh', '-c', `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 ${ip} 8080 2>&1; echo "exit=$?"`], { nodeName: s.spec!.nodeName });
    await record(client, s.spec!.nodeName!);
    const r = await runPodToCompletion(kc, client, timeoutMs);
    await ctx.attach(`GET http://${ip}:8080/ from pod basics-client`, r.logs);
    check(r.logs.includes(PAGE), `the "${rc}" pod on ${s.spec?.nodeName} (IP ${ip}) did not answer pod basics-client on port 8080: ${r.logs.trim().replace(/\n/g, '; ').slice(0, 200) || '(no output)'}`, kubernetes.podIpAnswers);
  });
});
