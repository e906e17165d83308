// A complete kind node image made on this machine from pinned upstream sources, for hosts that cannot
// pull kindest/node (air-gapped CI, this test bed): `cluster.nodeImage: local`. Cached by version.
//
// kind's own `kind build node-image` cannot do it offline: every image other than the four it builds
// is fetched with `ctr content fetch`, present or not (pkg/build/nodeimage/buildcontext.go). So its
// steps are done here by hand, in its order, on a base laid out as kind's images/base/Dockerfile does:
//   1. a Debian rootfs (the one systemd test nodes boot) plus the Debian packages kind's base installs
//      (iptables, conntrack, CNI plugins …), and kind's own base files from the sigs.k8s.io/kind module
//      (entrypoint, containerd config, kubelet and containerd units);
//   2. containerd 2 from its module (the runsc shim speaks shim protocol v2, which Debian's 1.6 lacks);
//   3. kubeadm, kubelet, kubectl in /usr/bin and /kind/version (buildImage in buildcontext.go);
//   4. the images `kubeadm config images list` names plus containerd's sandbox image, imported with
//      `ctr -n k8s.io images import --label io.cri-containerd.pinned=pinned --no-unpack`, as kind's
//      imageimporter.go does, into a containerd started for the purpose and stopped after;
//   5. `docker commit` with kind's ENTRYPOINT.
// No kindnetd (its module is not served) and no kube-proxy image: the provider lays pod networking
// itself (see network.ts) and runs kube-proxy-less; `kindConfigFor` says so to kind.
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { buildContainerd, cacheRoot, go } from '../../harness/binaries.ts';
import { InfrastructureError } from '../../harness/errors.ts';
import { writeOciArchive, type OciImage } from '../../harness/image.ts';
import { step } from '../../harness/log.ts';
import { type CommandResult, runCommand, runSync } from '../../harness/process.ts';
import { CONTAINERD_MODULE_VERSION, ETCD_VERSION, KIND_VERSION, KUBERNETES_VERSION } from '../../harness/versions.ts';
import { buildKubeadm, buildKubernetes } from '../kube/build.ts';
import { ensureNspawnRootfs } from '../local/nspawn-node.ts';

/** The `cluster.nodeImage` value that asks for this image. */
export const LOCAL_NODE_IMAGE = 'local';
/** Bump when the recipe below changes, so an old cached image is not reused. */
const RECIPE = 1;

/** Runs the docker CLI (DOCKER_HOST and friends from the environment); throws with docker's own words. */
export type DockerCli = (args: string[], timeoutMs?: number) => Promise<string>;

/** The docker CLI through `run` (the kind provider's runner, which tests replace). */
export function dockerCliWith(run: (argv: string[], opts?: { timeoutMs?: number }) => Promise<CommandResult> = runCommand): DockerCli {
  return async (args, timeoutMs = 300_000) => {
    const r = await run(['docker', ...args], { timeoutMs });
    if (r.code !== 0) throw new InfrastructureError(`docker ${args.slice(0, 2).join(' ')} failed (exit ${r.code}): ${(r.stderr.trim() || r.stdout.trim()).slice(-1500)}`);
    return r.stdout;
  };
}

export const dockerCli: DockerCli = dockerCliWith();

/** etcd's image tag in kubeadm's form (<version>-<revision>). */
const ETCD_TAG = `${ETCD_VERSION.replace(/^v/, '')}-0`;

/** What kubeadm v1.35 and kind's containerd config name; the etcd tag is ours (the kind config tells kubeadm). */
export const LOCAL_IMAGE_NAMES = {
  apiserver: `registry.k8s.io/kube-apiserver:${KUBERNETES_VERSION}`,
  controllerManager: `registry.k8s.io/kube-controller-manager:${KUBERNETES_VERSION}`,
  scheduler: `registry.k8s.io/kube-scheduler:${KUBERNETES_VERSION}`,
  /** kubeadm's own pairing for 1.35 is 3.6.6-0 (cmd/kubeadm/app/constants); this image carries ETCD_VERSION. */
  etcdTag: ETCD_TAG,
  etcd: `registry.k8s.io/etcd:${ETCD_TAG}`,
  /** kind's containerd sandbox_image (images/base/files/etc/containerd/config.toml) and kubeadm's PauseVersion. */
  pause: ['registry.k8s.io/pause:3.10', 'registry.k8s.io/pause:3.10.1'],
};

/** Debian packages kind's base image installs that its entrypoint, kubelet and pods need here. */
const PACKAGES = ['iptables', 'conntrack', 'ethtool', 'kmod', 'procps', 'iproute2', 'containernetworking-plugins'];

/** The image reference for this recipe and these pinned versions. */
export function localNodeImageRef(rootfsTar: string): string {
  const key = createHash('sha256')
    .update(JSON.stringify({ RECIPE, KUBERNETES_VERSION, ETCD_VERSION, CONTAINERD_MODULE_VERSION, KIND_VERSION, PACKAGES, rootfs: basename(rootfsTar) }))
    .digest('hex')
    .slice(0, 12);
  return `gvisor-e2e.local/kind-node:${KUBERNETES_VERSION}-${key}`;
}

/**
 * The local node image in the engine `docker` talks to: already there, else loaded from the cache,
 * else built (then saved to the cache). Returns its reference.
 */
export async function ensureLocalNodeImage(docker: DockerCli = dockerCli, beforeAdding: (ref: string) => void = () => {}): Promise<string> {
  const rootfsTar = await ensureNspawnRootfs({ cacheDir: join(cacheRoot(), 'rootfs') });
  const ref = localNodeImageRef(rootfsTar);
  if (await docker(['image', 'inspect', '--format', '{{.Id}}', ref], 30_000).then(() => true, () => false)) return ref;
  // The caller records the image as its own before it lands in the engine (down removes it).
  beforeAdding(ref);
  const cached = join(cacheRoot(), 'kind-node', `${ref.split(':')[1]}.tar`);
  if (!existsSync(cached)) {
    await step(`build kind node image ${ref} from pinned sources (once per version; cached)`, () => buildLocalNodeImage(docker, rootfsTar, ref));
    await step(`save ${ref} to ${cached}`, async () => {
      mkdirSync(join(cacheRoot(), 'kind-node'), { recursive: true });
      await docker(['save', '-o', `${cached}.tmp`, ref], 900_000);
      renameSync(`${cached}.tmp`, cached);
    });
    return ref;
  }
  await step(`docker load kind node image ${ref} from the cache`, () => docker(['load', '-i', cached], 900_000));
  return ref;
}

async function buildLocalNodeImage(docker: DockerCli, rootfsTar: string, ref: string): Promise<void> {
  const [kube, kubeadm, containerd, pause] = await Promise.all([buildKubernetes(), buildKubeadm(), buildContainerd(), buildPause()]);
  const { Dir: kindDir } = JSON.parse(await go(undefined, ['mod', 'download', '-json', `sigs.k8s.io/kind@${KIND_VERSION}`])) as { Dir: string };
  const work = mkdtempSync(join(tmpdir(), 'gvisor-e2e-kindnode-'));
  const base = `${ref}-base`;
  try {
    const overlay = join(work, 'overlay');
    const files = join(kindDir, 'images', 'base', 'files');
    for (const d of ['etc', 'kind', 'usr']) cpSync(join(files, d), join(overlay, d), { recursive: true });
    // The module cache is read-only; the image's files must not be. Modes as the Dockerfile's COPY --chmod.
    runSync(['chmod', '-R', 'u+w,go-w', overlay]);
    runSync(['sh', '-c', `chmod 0755 ${overlay}/kind ${overlay}/kind/bin ${overlay}/kind/bin/* ${overlay}/usr/local/bin/*`]);
    writeFileSync(join(overlay, 'kind/version'), `${KUBERNETES_VERSION}\n`);
    mkdirSync(join(overlay, 'usr/bin'), { recursive: true });
    for (const [name, src] of [['kubeadm', kubeadm], ['kubelet', kube.kubelet], ['kubectl', kube.kubectl]] as const) copyFileSync(src, join(overlay, 'usr/bin', name));
    // kind's units run containerd from /usr/local/bin; the runc shim is Debian's (it speaks v2 to containerd 2).
    for (const [name, src] of [['containerd', containerd.containerd], ['ctr', containerd.ctr]] as const) copyFileSync(src, join(overlay, 'usr/local/bin', name));
    symlinkSync('/usr/bin/containerd-shim-runc-v2', join(overlay, 'usr/local/bin/containerd-shim-runc-v2'));
    runSync(['chmod', '0755', ...['kubeadm', 'kubelet', 'kubectl'].map((b) => join(overlay, 'usr/bin', b))]);
    // cri-base.json: `ctr oci spec` without rlimits, as kind's Dockerfile makes it.
    const spec = JSON.parse(runSync([containerd.ctr, 'oci', 'spec'])) as { process: Record<string, unknown> };
    delete spec.process.rlimits;
    writeFileSync(join(overlay, 'etc/containerd/cri-base.json'), JSON.stringify(spec, null, 2));

    await step('make the control-plane and pause images (OCI archive)', async () => {
      const images = join(work, 'images');
      const img = (names: string[], binary: string, dest: string): OciImage => {
        const root = join(images, basename(dest));
        mkdirSync(join(root, 'usr/local/bin'), { recursive: true });
        for (const d of ['etc', 'tmp', 'var/run']) mkdirSync(join(root, d), { recursive: true });
        chmodSync(join(root, 'tmp'), 0o1777);
        writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n');
        writeFileSync(join(root, 'etc/group'), 'root:x:0:\nnobody:x:65534:\n');
        copyFileSync(binary, join(root, dest));
        chmodSync(join(root, dest), 0o755);
        return { names, root, config: { Env: ['PATH=/usr/local/bin:/usr/bin:/bin'], Entrypoint: [dest], WorkingDir: '/' }, history: `gvisor-e2e: ${basename(binary)} built from its pinned module` };
      };
      mkdirSync(join(overlay, 'kind/images'), { recursive: true });
      await writeOciArchive(join(overlay, 'kind/images/control-plane.oci.tar'), [
        img([LOCAL_IMAGE_NAMES.apiserver], kube.kubeApiserver, '/usr/local/bin/kube-apiserver'),
        img([LOCAL_IMAGE_NAMES.controllerManager], kube.kubeControllerManager, '/usr/local/bin/kube-controller-manager'),
        img([LOCAL_IMAGE_NAMES.scheduler], kube.kubeScheduler, '/usr/local/bin/kube-scheduler'),
        img([LOCAL_IMAGE_NAMES.etcd], kube.etcd, '/usr/local/bin/etcd'),
        img(LOCAL_IMAGE_NAMES.pause, pause, '/pause'),
      ]);
    });

    const debs = join(overlay, 'tmp/kind-debs');
    mkdirSync(debs, { recursive: true });
    await step(`download the Debian packages kind's base image has (${PACKAGES.join(', ')})`, () => aptDownload(rootfsTar, debs, PACKAGES));

    await docker(['import', rootfsTar, base], 600_000);
    const id = (await docker(['create', '--entrypoint', '/bin/sh', base, '/kind/build.sh'])).trim();
    try {
      writeFileSync(join(overlay, 'kind/build.sh'), BUILD_SCRIPT, { mode: 0o755 });
      await step('copy kind base files, Kubernetes binaries and images into the build container', () => docker(['cp', `${overlay}/.`, `${id}:/`], 900_000));
      await step('install packages, enable units, import images into the node containerd (in the build container)', async () => {
        await docker(['start', '-a', id], 900_000).catch((e: Error) => {
          throw new InfrastructureError(`building kind node image ${ref}: ${e.message}`);
        });
        const code = (await docker(['inspect', '--format', '{{.State.ExitCode}}', id])).trim();
        if (code !== '0') throw new InfrastructureError(`building kind node image ${ref}: the build script exited ${code}: ${(await docker(['logs', '--tail', '30', id]).catch(() => '')).trim()}`);
      });
      // ENTRYPOINT as kind's buildcontext commits it (CMD reset with it); systemd must know it runs in a container.
      await docker(['commit', '--change', 'ENV container=docker', '--change', 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]', '--change', 'CMD []', id, ref], 600_000);
    } finally {
      await docker(['rm', '-f', '-v', id]).catch(() => '');
      await docker(['rmi', base]).catch(() => '');
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

// What kind's Dockerfile RUNs after COPY, then its imageimporter.go: containerd in the background,
// `ctr images import`, containerd stopped (by the pid it was started with).
const BUILD_SCRIPT = `#!/bin/sh
set -eu
if ls /tmp/kind-debs/*.deb >/dev/null 2>&1; then dpkg -i /tmp/kind-debs/*.deb >/tmp/dpkg.log 2>&1 || { tail -20 /tmp/dpkg.log; exit 1; }; fi
rm -rf /tmp/kind-debs /tmp/dpkg.log
find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete
rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* /lib/systemd/system/local-fs.target.wants/* \\
  /lib/systemd/system/sockets.target.wants/*udev* /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >> /etc/systemd/journald.conf
[ -e /sbin/init ] || ln -s /usr/lib/systemd/systemd /sbin/init
systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
# binfmt is kernel-global (kind masks it); the rootfs's sshd has no host keys and no use in a kind node.
systemctl mask systemd-binfmt.service ssh.service >/dev/null 2>&1
mkdir -p /etc/kubernetes/manifests /opt/cni
# containerd's CRI looks for CNI plugins in /opt/cni/bin; Debian installs them in /usr/lib/cni.
ln -sfn /usr/lib/cni /opt/cni/bin
containerd >/tmp/containerd.log 2>&1 &
pid=$!
i=0; until ctr version >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 100 ] || { cat /tmp/containerd.log; exit 1; }; sleep 0.2; done
ctr -n k8s.io images import --label io.cri-containerd.pinned=pinned --no-unpack /kind/images/control-plane.oci.tar
kill $pid; wait $pid || true
rm -rf /kind/images /kind/build.sh /tmp/containerd.log /run/containerd /var/lib/containerd/tmpmounts
`;

/** The pause container (build/pause/linux/pause.c of the pinned Kubernetes), linked statically as its Makefile does. */
export async function buildPause(): Promise<string> {
  const dir = join(cacheRoot(), 'pause', KUBERNETES_VERSION);
  const out = join(dir, 'pause');
  if (existsSync(out)) return out;
  const { Dir } = JSON.parse(await go(undefined, ['mod', 'download', '-json', `k8s.io/kubernetes@${KUBERNETES_VERSION}`])) as { Dir: string };
  mkdirSync(dir, { recursive: true });
  const r = await runCommand(['cc', '-Os', '-Wall', '-Werror', '-static', `-DVERSION=v3.10.1-${KUBERNETES_VERSION}`, '-o', `${out}.tmp`, join(Dir, 'build/pause/linux/pause.c')]);
  if (r.code !== 0) throw new InfrastructureError(`building pause from k8s.io/kubernetes@${KUBERNETES_VERSION} build/pause/linux/pause.c needs a C compiler with static libc (apt-get install gcc libc6-dev): ${(r.stderr || r.stdout).slice(-800)}`);
  renameSync(`${out}.tmp`, out);
  return out;
}

/**
 * Downloads `pkgs` with what they need beyond the rootfs's installed set into `dir`: apt resolves
 * against the rootfs's own dpkg status (alternatives chosen as an install there would choose them).
 */
async function aptDownload(rootfsTar: string, dir: string, pkgs: string[]): Promise<void> {
  const state = mkdtempSync(join(tmpdir(), 'gvisor-e2e-apt-'));
  try {
    writeFileSync(join(state, 'status'), runSync(['tar', '-xOf', rootfsTar, './var/lib/dpkg/status'], { maxBuffer: 64 * 1024 * 1024 }));
    mkdirSync(join(dir, 'partial'), { recursive: true });
    const download = () =>
      runCommand(
        ['apt-get', '-qq', '-o', `Dir::State::status=${join(state, 'status')}`, '-o', `Dir::Cache::archives=${dir}`, '-o', 'Debug::NoLocking=1', '--download-only', '--no-install-recommends', '-y', 'install', ...pkgs],
        { timeoutMs: 300_000 },
      );
    let r = await download();
    if (r.code !== 0) {
      // Package lists older than the mirror name files it no longer has: refresh them once.
      await runCommand(['apt-get', 'update', '-qq'], { timeoutMs: 300_000 });
      r = await download();
    }
    if (r.code !== 0) throw new InfrastructureError(`apt-get --download-only install ${pkgs.join(' ')} (for the kind node image) failed: ${(r.stderr || r.stdout).slice(-800)}`);
  } finally {
    rmSync(join(dir, 'partial'), { recursive: true, force: true });
    rmSync(state, { recursive: true, force: true });
  }
}
