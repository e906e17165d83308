import { accessSync, chmodSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cacheRoot, go, renameIntoCache } from '../../harness/binaries.ts';
import { ETCD_VERSION, KUBERNETES_VERSION } from '../../harness/versions.ts';

export { ETCD_VERSION, KUBERNETES_VERSION };
import { InfrastructureError } from '../../harness/errors.ts';
import { step } from '../../harness/log.ts';

// The Kubernetes control plane, kubelet, kubectl and etcd, built from their Go modules through the
// Go module proxy (the only way in here) and cached by version outside the clone, like runsc and
// containerd in harness/binaries.ts. Go is only the build tool: nothing of the harness is Go.
//
// k8s.io/kubernetes is not meant to be a dependency: its go.mod points every k8s.io/* staging module
// at ./staging/src/k8s.io/<name> and requires them as v0.0.0, and a dependency's replace directives
// are ignored. A throwaway wrapper module therefore requires k8s.io/kubernetes and replaces each staging
// module with its published twin (k8s v1.X.Y ↔ staging v0.X.Y). The list is read from the release's own
// go.mod at build time, so a release that adds or drops a staging module needs no change here.

/** Newest v1.34/v1.35 release the Go module proxy serves that builds with Go 1.26 (its go.mod says go 1.25.0). */

export interface KubeBinaries {
  /** <cacheRoot>/kubernetes/<version>: the five Kubernetes binaries. */
  dir: string;
  kubeApiserver: string;
  kubeControllerManager: string;
  kubeScheduler: string;
  kubelet: string;
  kubectl: string;
  /** <cacheRoot>/etcd/<ETCD_VERSION>/etcd */
  etcd: string;
}

const KUBE_COMMANDS = ['kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'kubelet', 'kubectl'] as const;
/** What hack/lib/golang.sh passes for a non-debug build (selinux support on, test-only and x/net/trace code out). */
const KUBE_BUILD_TAGS = 'selinux,notest,grpcnotrace';
const ETCD_MAIN = 'go.etcd.io/etcd/server/v3';


/** Parses "v1.X.Y[-pre]"; staging modules are released in lock-step as "v0.X.Y[-pre]". */
function parseKubeVersion(version: string): { minor: string; staging: string } {
  const m = /^v1\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?$/.exec(version);
  if (!m) throw new InfrastructureError(`Kubernetes version "${version}" is not of the form v1.<minor>.<patch>`);
  return { minor: m[1]!, staging: `v0.${m[1]}.${m[2]}${m[3] ?? ''}` };
}

/**
 * The go.mod of the wrapper module that builds k8s.io/kubernetes `version`, derived from that release's
 * own go.mod (`upstreamGoMod`): its go and godebug lines (a dependency's are ignored, and godebug decides
 * the binaries' GODEBUG defaults), a requirement on it, and its replace directives made usable from outside:
 * `./staging/src/k8s.io/<name>` becomes the published k8s.io/<name> at the staging version, a replacement by
 * another module version is kept as is. Pure, so it can be tested without the network.
 */
export function kubeWrapperGoMod(upstreamGoMod: string, version: string): string {
  const { staging } = parseKubeVersion(version);
  let goLine = '';
  const godebug: string[] = [];
  const replaces: string[] = [];
  let block: string | undefined;
  for (const raw of upstreamGoMod.split('\n')) {
    const line = raw.replace(/\/\/.*$/, '').trim();
    if (!line) continue;
    if (block) {
      if (line === ')') block = undefined;
      else if (block === 'godebug') godebug.push(line);
      else if (block === 'replace') replaces.push(line);
      continue;
    }
    const [verb, ...rest] = line.split(/\s+/);
    const body = rest.join(' ');
    if (verb === 'go') goLine = body;
    else if ((verb === 'godebug' || verb === 'replace') && body === '(') block = verb;
    else if (verb === 'godebug') godebug.push(body);
    else if (verb === 'replace') replaces.push(body);
  }
  if (!goLine) throw new InfrastructureError(`k8s.io/kubernetes@${version} go.mod has no go directive`);

  const out: string[] = [];
  for (const r of replaces) {
    const m = /^(\S+)(?:\s+(\S+))?\s*=>\s*(\S+)(?:\s+(\S+))?$/.exec(r);
    if (!m) throw new InfrastructureError(`k8s.io/kubernetes@${version} go.mod: cannot read replace directive "${r}"`);
    const [, from, , to, toVersion] = m;
    if (toVersion) {
      out.push(r); // module => module version: applies as written
    } else if (to === `./staging/src/${from}`) {
      out.push(`${from} => ${from} ${staging}`);
    } else {
      throw new InfrastructureError(`k8s.io/kubernetes@${version} go.mod replaces ${from} with the local path ${to}, which no published module stands for`);
    }
  }
  if (!out.some((r) => r.startsWith('k8s.io/api '))) {
    throw new InfrastructureError(`k8s.io/kubernetes@${version} go.mod: found no staging replace directives (format changed?)`);
  }
  return [
    'module gvisor-e2e/buildtool',
    '',
    `go ${goLine}`,
    '',
    ...godebug.map((d) => `godebug ${d}`),
    '',
    `require k8s.io/kubernetes ${version}`,
    '',
    'replace (',
    ...out.map((r) => `\t${r}`),
    ')',
    '',
  ].join('\n');
}

/**
 * Builds into a fresh directory beside the cache entry and renames it into place as a whole, so an
 * interrupted build never leaves half an entry and another process never sees one. If a concurrent
 * build of the same version got there first, its entry is kept.
 */
async function buildIntoCache(dir: string, complete: () => boolean, build: (out: string) => Promise<void>): Promise<void> {
  const parent = join(dir, '..');
  mkdirSync(parent, { recursive: true });
  const out = mkdtempSync(join(parent, '.tmp-'));
  try {
    chmodSync(out, 0o755); // mkdtemp makes it 0700; the entry is read by other users and copied to nodes
    await build(out);
    renameIntoCache(out, dir, complete);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

function withWorkDir<T>(fn: (work: string) => Promise<T>): Promise<T> {
  const work = mkdtempSync(join(tmpdir(), 'gvisor-e2e-gobuild-'));
  return fn(work).finally(() => rmSync(work, { recursive: true, force: true }));
}

/** Builds the etcd server from go.etcd.io/etcd/server/v3 (its main package is the module root); cached. */
async function buildEtcd(version = ETCD_VERSION): Promise<string> {
  const dir = join(cacheRoot(), 'etcd', version);
  const etcd = join(dir, 'etcd');
  if (existsSync(etcd)) return etcd;
  await step(`build etcd ${version} from the ${ETCD_MAIN} Go module`, () =>
    buildIntoCache(dir, () => existsSync(etcd), (out) =>
      withWorkDir(async (work) => {
        // A module of its own: in one module graph with Kubernetes, MVS would move either side's dependencies.
        writeFileSync(join(work, 'go.mod'), 'module gvisor-e2e/buildtool\n\ngo 1.26\n');
        await go(work, ['get', `${ETCD_MAIN}@${version}`]);
        // What etcd's ./scripts/build_lib.sh sets; `etcd --version` shows it as "Git SHA".
        const ldflags = `-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_MAIN}@${version}`;
        await go(work, ['build', '-trimpath', '-ldflags', ldflags, '-o', join(out, 'etcd'), ETCD_MAIN]);
      }),
    ),
  );
  return etcd;
}

/** Builds `commands` (k8s.io/kubernetes/cmd/<name>) of Kubernetes `version` into the cache entry `dir`, unless all are there. */
async function buildKubeCommands(version: string, dir: string, commands: readonly string[]): Promise<void> {
  const { minor } = parseKubeVersion(version);
  const complete = () => commands.every((c) => existsSync(join(dir, c)));
  if (complete()) return;
  await step(`build ${commands.join(', ')} ${version} from the k8s.io/kubernetes Go module`, () =>
    buildIntoCache(dir, complete, (out) =>
      withWorkDir(async (work) => {
        const info = await step(`fetch k8s.io/kubernetes ${version} and its dependencies`, async () => {
          const dl = JSON.parse(await go(work, ['mod', 'download', '-json', `k8s.io/kubernetes@${version}`])) as { GoMod: string; Info: string };
          writeFileSync(join(work, 'go.mod'), kubeWrapperGoMod(readFileSync(dl.GoMod, 'utf8'), version));
          await go(work, ['get', ...commands.map((c) => `k8s.io/kubernetes/cmd/${c}@${version}`)]);
          return JSON.parse(readFileSync(dl.Info, 'utf8')) as { Time?: string };
        });
        // hack/lib/version.sh sets these in both packages: component-base's is what `--version` prints,
        // client-go's is what kubectl sends as its user agent (kubeadm also picks the etcd and CoreDNS tags by
        // it). The release's tag time stands in for the build date so that a rebuild gives the same binaries.
        // gitCommit is left unset, as upstream does without git.
        const buildDate = info.Time ? new Date(info.Time).toISOString().replace(/\.\d{3}Z$/, 'Z') : '1970-01-01T00:00:00Z';
        const vars = { gitVersion: version, gitMajor: '1', gitMinor: minor, gitTreeState: 'clean', buildDate };
        const ldflags = ['-s', '-w'];
        for (const pkg of ['k8s.io/component-base/version', 'k8s.io/client-go/pkg/version']) {
          for (const [k, v] of Object.entries(vars)) ldflags.push(`-X ${pkg}.${k}=${v}`);
        }
        // One `go build` for all: the go command schedules their compiles and links together over all
        // cores. Measured on 2 busy cores, cold: 576 s, against 865 s for five sequential builds sharing a cache.
        // Warm (build cache full, binary cache empty) it is about 20 s of linking.
        await step(`go build ${commands.join(' ')} (about 10 min on 2 cores with a cold Go build cache)`, () =>
          go(work, [
            'build', '-trimpath', '-tags', KUBE_BUILD_TAGS, '-ldflags', ldflags.join(' '), '-o', `${out}/`,
            ...commands.map((c) => `k8s.io/kubernetes/cmd/${c}`),
          ]),
        );
      }),
    ),
  );
}

/** kubeadm of Kubernetes `version` (for kind node images), cached apart from the five the local cluster needs. */
export async function buildKubeadm(version = KUBERNETES_VERSION): Promise<string> {
  const dir = join(cacheRoot(), 'kubeadm', version);
  await buildKubeCommands(version, dir, ['kubeadm']);
  return join(dir, 'kubeadm');
}

/**
 * Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl from the
 * k8s.io/kubernetes Go module, and etcd from go.etcd.io/etcd/server/v3; each cached by version under
 * cacheRoot(). A cold build takes a long while on 2 cores (see the step lines); a cached one is instant.
 */
export async function buildKubernetes(version = KUBERNETES_VERSION): Promise<KubeBinaries> {
  const dir = join(cacheRoot(), 'kubernetes', version);
  const bin = {
    dir,
    kubeApiserver: join(dir, 'kube-apiserver'),
    kubeControllerManager: join(dir, 'kube-controller-manager'),
    kubeScheduler: join(dir, 'kube-scheduler'),
    kubelet: join(dir, 'kubelet'),
    kubectl: join(dir, 'kubectl'),
  };
  const etcd = await buildEtcd();
  await buildKubeCommands(version, dir, KUBE_COMMANDS);
  return { ...bin, etcd };
}

/** Binaries the user already has (official release binaries): every one must be there and executable. */
export function kubeBinariesFromDir(dir: string): KubeBinaries {
  const at = (name: string) => {
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
    } catch {
      throw new InfrastructureError(`cluster.kubernetesBinDir: ${p} is missing or not executable (needed: ${[...KUBE_COMMANDS, 'etcd'].join(', ')})`);
    }
    return p;
  };
  return { dir, kubeApiserver: at('kube-apiserver'), kubeControllerManager: at('kube-controller-manager'), kubeScheduler: at('kube-scheduler'), kubelet: at('kubelet'), kubectl: at('kubectl'), etcd: at('etcd') };
}
