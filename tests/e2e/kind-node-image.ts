import { execFileSync } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { go } from '../../harness/binaries.ts';
import { KIND_VERSION, KUBERNETES_VERSION } from '../../harness/versions.ts';

// A kind node image made on this machine, where no kindest/node can be pulled: a Debian rootfs
// with systemd, containerd and runc (the cached one systemd nodes boot), plus kind's own base-image
// files from the sigs.k8s.io/kind module (its entrypoint, containerd config.toml and units), laid
// out as kind's images/base/Dockerfile does, plus the Debian packages kind's entrypoint needs that
// the rootfs lacks (iptables), fetched with apt-get download and installed with dpkg in the image. kind boots it like a kindest/node — systemd as PID 1,
// containerd running, kind's containerd patches applied — up to `kubeadm init`, which it lacks
// (no Kubernetes control-plane images can be had here).

export async function makeKindNodeImage(o: { dockerHost: string; rootfsTar: string; tag: string }): Promise<void> {
  const env = { ...process.env, DOCKER_HOST: o.dockerHost };
  const docker = (args: string[], input?: Buffer) => execFileSync('docker', args, { env, input, maxBuffer: 64 * 1024 * 1024, timeout: 300_000 }).toString();
  const { Dir } = JSON.parse(await go(undefined, ['mod', 'download', '-json', `sigs.k8s.io/kind@${KIND_VERSION}`])) as { Dir: string };
  const files = join(Dir, 'images', 'base', 'files');
  const overlay = mkdtempSync(join(tmpdir(), 'gvisor-e2e-kindnode-'));
  const base = `${o.tag}-base`;
  try {
    for (const d of ['etc', 'kind', 'usr']) cpSync(join(files, d), join(overlay, d), { recursive: true });
    // The module cache is read-only; the image's files must not be.
    execFileSync('chmod', ['-R', 'u+w,go-w', overlay]);
    for (const d of ['kind/bin', 'usr/local/bin']) execFileSync('sh', ['-c', `chmod 0755 ${join(overlay, d)}/*`]);
    chmodSync(join(overlay, 'kind'), 0o755);
    writeFileSync(join(overlay, 'kind/version'), `${KUBERNETES_VERSION}\n`);
    // kind's units run containerd from /usr/local/bin; Debian's is in /usr/bin.
    for (const b of ['containerd', 'ctr', 'containerd-shim-runc-v2']) symlinkSync(`/usr/bin/${b}`, join(overlay, 'usr/local/bin', b));
    // cri-base.json: `ctr oci spec` without rlimits, as kind's Dockerfile makes it.
    const spec = JSON.parse(execFileSync('ctr', ['oci', 'spec'], { encoding: 'utf8' })) as { process: Record<string, unknown> };
    delete spec.process.rlimits;
    writeFileSync(join(overlay, 'etc/containerd/cri-base.json'), JSON.stringify(spec, null, 2));
    mkdirSync(join(overlay, 'etc/systemd/system/multi-user.target.wants'), { recursive: true });
    for (const u of ['containerd.service', 'undo-mount-hacks.service']) symlinkSync(`/etc/systemd/system/${u}`, join(overlay, 'etc/systemd/system/multi-user.target.wants', u));
    // binfmt is kernel-global (kind masks it); the cached rootfs's sshd has no host keys and no use here.
    for (const u of ['systemd-binfmt.service', 'ssh.service']) symlinkSync('/dev/null', join(overlay, 'etc/systemd/system', u));
    mkdirSync(join(overlay, 'etc/kubernetes/manifests'), { recursive: true });

    const debs = join(overlay, 'tmp/kind-debs');
    mkdirSync(debs, { recursive: true });
    const missing = missingPackages(o.rootfsTar, ENTRYPOINT_PACKAGES);
    if (missing.length) {
      const download = () => execFileSync('apt-get', ['download', ...missing], { cwd: debs, stdio: ['ignore', 'ignore', 'pipe'], timeout: 300_000 });
      try {
        download();
      } catch {
        // Package lists older than the mirror name files it no longer has: refresh them once.
        execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore', timeout: 300_000 });
        download();
      }
    }

    docker(['import', o.rootfsTar, base]);
    const id = docker(['create', base, '/bin/sh', '-c', 'dpkg -i /tmp/kind-debs/*.deb >/dev/null 2>&1 || [ -z "$(ls /tmp/kind-debs)" ]; rm -rf /tmp/kind-debs']).trim();
    try {
      docker(['cp', '-', `${id}:/`], execFileSync('tar', ['-C', overlay, '--owner=0', '--group=0', '-cf', '-', '.'], { maxBuffer: 512 * 1024 * 1024 }));
      docker(['start', '-a', id]);
      const code = docker(['inspect', '--format', '{{.State.ExitCode}}', id]).trim();
      if (code !== '0') throw new Error(`installing ${missing.join(', ')} into the kind node image failed (dpkg exit ${code})`);
      // systemd needs `container` to know it runs in one; kind starts the entrypoint with /sbin/init.
      docker(['commit', '--change', 'ENV container=docker', '--change', 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]', '--change', 'CMD []', id, o.tag]);
    } finally {
      docker(['rm', '-f', id]);
      docker(['rmi', base]);
    }
  } finally {
    rmSync(overlay, { recursive: true, force: true });
  }
}

/** What kind's entrypoint runs that a minimal Debian may lack (select_iptables: update-alternatives to iptables-legacy/-nft). */
const ENTRYPOINT_PACKAGES = ['iptables'];

/** `pkgs` and their dependencies that the rootfs's dpkg database does not list as installed. */
function missingPackages(rootfsTar: string, pkgs: string[]): string[] {
  const status = execFileSync('tar', ['-xOf', rootfsTar, './var/lib/dpkg/status'], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  const installed = new Set([...status.matchAll(/^Package: (\S+)$/gm)].map((m) => m[1]!));
  const deps = execFileSync('apt-cache', ['depends', '--recurse', '--no-recommends', '--no-suggests', '--no-conflicts', '--no-breaks', '--no-replaces', '--no-enhances', ...pkgs], { encoding: 'utf8' });
  // Real package names start a line; indented lines are relations, <name> lines virtual packages.
  return [...new Set(deps.split('\n').filter((l) => /^[a-z0-9]/.test(l)))].filter((p) => !installed.has(p));
}
