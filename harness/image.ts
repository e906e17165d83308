import { runSync } from './process.ts';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create as tarCreate } from 'tar';
import { cacheRoot } from './binaries.ts';
import { InfrastructureError } from './errors.ts';
import { log } from './log.ts';
import { sh, writeNodeFile, type NodeAccess } from './node.ts';
import { fixedDelays, retry } from './retry.ts';

// No registry is reachable from test nodes, so the one image the suites need is built here
// from Debian's busybox-static as an OCI layout archive and imported with `ctr`. The same
// archive carries two names: the test image, and the sandbox (pause) image for test beds
// whose containerd config points sandbox_image at it.

export const BUSYBOX = '/bin/busybox';

export interface TestImage {
  archive: string;
  /** Name used for test containers. */
  image: string;
  /** Name usable as containerd's sandbox_image. */
  pause: string;
  /** The image id (its config digest): containerd's CRI keeps a `sha256:<id>` ref beside the names. */
  id: string;
}

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

// The pause process: sleep in the background so TERM is handled at once.
const PAUSE_CMD = ['/bin/sh', '-c', "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"];

/** One image of an OCI archive: a single layer made of `root`, its run config, and the names it goes by. */
export interface OciImage {
  names: string[];
  /** A directory whose tree is the image's one layer. */
  root: string;
  /** The OCI image config's `config` (Env, Entrypoint, Cmd, WorkingDir, User). */
  config: Record<string, unknown>;
  history: string;
}

/**
 * Writes an OCI image layout archive holding `images` (what `ctr images import` and `kind load
 * image-archive` read) and returns the first image's id. Written by hand rather than with a library:
 * the format is four JSON documents and a tar, and no npm package writes OCI layouts without a Docker
 * engine or a registry. Fixed mtimes and portable headers make the digests reproducible.
 */
export async function writeOciArchive(archive: string, images: OciImage[]): Promise<string> {
  const work = mkdtempSync(join(tmpdir(), 'gvisor-e2e-oci-'));
  try {
    const layout = join(work, 'layout');
    mkdirSync(join(layout, 'blobs/sha256'), { recursive: true });
    const blob = (b: Buffer) => {
      writeFileSync(join(layout, 'blobs/sha256', sha(b)), b);
      return `sha256:${sha(b)}`;
    };
    const manifests: object[] = [];
    const ids: string[] = [];
    for (const [i, img] of images.entries()) {
      const layerPath = join(work, `layer-${i}.tar`);
      await tarCreate({ file: layerPath, cwd: img.root, portable: true, mtime: new Date(0), noDirRecurse: false }, ['.']);
      const layer = readFileSync(layerPath);
      const layerDigest = blob(layer);
      rmSync(layerPath);
      const config = Buffer.from(
        JSON.stringify({
          architecture: process.arch === 'arm64' ? 'arm64' : 'amd64',
          os: 'linux',
          config: img.config,
          rootfs: { type: 'layers', diff_ids: [layerDigest] },
          history: [{ created_by: img.history }],
        }),
      );
      ids.push(blob(config));
      const manifest = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha(config)}`, size: config.length },
          layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layer.length }],
        }),
      );
      const desc = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: blob(manifest), size: manifest.length };
      for (const name of img.names) manifests.push({ ...desc, annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': name } });
    }
    writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    writeFileSync(join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests }));
    await tarCreate({ file: archive, cwd: layout, portable: true, mtime: new Date(0) }, ['oci-layout', 'index.json', 'blobs']);
    return ids[0]!;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

export async function buildTestImage(busybox = BUSYBOX): Promise<TestImage> {
  if (!existsSync(busybox)) {
    throw new InfrastructureError(`${busybox} not found: install Debian's busybox-static (apt-get install busybox-static) to build the test image`);
  }
  const bbHash = sha(readFileSync(busybox)).slice(0, 12);
  const tag = `bb-${bbHash}`;
  const image = `gvisor-e2e.local/busybox:${tag}`;
  const pause = `gvisor-e2e.local/pause:${tag}`;
  const dir = join(cacheRoot(), 'images');
  const archive = join(dir, `busybox-${tag}.oci.tar`);
  // The id is kept beside the archive (an archive cached before ids were kept is built again).
  if (existsSync(archive) && existsSync(`${archive}.id`)) return { archive, image, pause, id: readFileSync(`${archive}.id`, 'utf8').trim() };
  let id = '';

  const work = mkdtempSync(join(tmpdir(), 'gvisor-e2e-image-'));
  try {
    const root = join(work, 'rootfs');
    mkdirSync(join(root, 'bin'), { recursive: true });
    for (const d of ['etc', 'tmp', 'proc', 'sys', 'dev', 'root']) mkdirSync(join(root, d));
    copyFileSync(busybox, join(root, 'bin/busybox'));
    const applets = runSync([busybox, '--list']).split('\n').filter((a) => a && a !== 'busybox');
    for (const a of applets) symlinkSync('busybox', join(root, 'bin', a));
    writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
    writeFileSync(join(root, 'etc/group'), 'root:x:0:\nnobody:x:65534:\n');

    mkdirSync(dir, { recursive: true });
    id = await writeOciArchive(`${archive}.tmp`, [
      { names: [image, pause], root, config: { Env: ['PATH=/bin'], Cmd: PAUSE_CMD, WorkingDir: '/' }, history: 'gvisor-e2e: busybox-static' },
    ]);
    writeFileSync(`${archive}.id`, `${id}\n`);
    renameSync(`${archive}.tmp`, archive);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return { archive, image, pause, id };
}

/**
 * ctr failures that say "not now" rather than "never": containerd restarting (socket refused, gRPC
 * unavailable), or a concurrent import of the same blobs (an ingest lock, a content commit that
 * already exists). Anything else — a corrupt archive, no space — fails at once.
 */
export const TRANSIENT_CTR_ERROR =
  /connection refused|no such file or directory.*\.sock|transport is closing|code = Unavailable|error reading from server: EOF|context deadline exceeded|ref .* locked|unavailable: ref|already exists|failed to commit|failed to acquire lease/i;

/** A `ctr images import` that exited non-zero: its exit code and its own words. */
class CtrImportFailed extends Error {
  constructor(
    readonly code: number,
    readonly detail: string,
  ) {
    super(detail);
  }
}

/**
 * Imports the test image into containerd's k8s.io namespace on a node, once; true when it imported
 * it now. Transient ctr errors are retried with backoff.
 */
export async function importTestImage(node: NodeAccess, img: TestImage, socket: string, tmpDir: string, delaysMs = [1000, 2000, 4000], before?: (missing: string[]) => Promise<void>): Promise<boolean> {
  const ctr = `ctr --address ${sh(socket)} -n k8s.io`;
  let missing: string[] = [];
  const imported = async () => {
    const have = await node.exec(`${ctr} images ls -q`);
    const names = have.stdout.split('\n');
    missing = [img.image, img.pause, img.id].filter((r) => !names.includes(r));
    return have.code === 0 && names.includes(img.image) && names.includes(img.pause);
  };
  if (await imported()) return false;
  // The caller records the import before it happens (down removes the image after a crash too):
  // only the refs that are not there yet (a node's own pause image is not the harness's to remove).
  await before?.(missing);
  const remote = `${tmpDir}/gvisor-e2e-image-${process.pid}-${Date.now()}.tar`;
  await writeNodeFile(node, remote, readFileSync(img.archive), '0600');
  try {
    return await retry(
      async () => {
        const r = await node.exec(`${ctr} images import ${sh(remote)}`, { timeoutMs: 180_000 });
        if (r.code === 0) return true;
        // A racing importer may have finished the job.
        if (await imported()) return true;
        throw new CtrImportFailed(r.code, (r.stderr.trim() || r.stdout.trim()).slice(0, 500));
      },
      {
        what: `[${node.name}] ctr images import`,
        backoff: fixedDelays(delaysMs),
        retryable: (e) => e instanceof CtrImportFailed && TRANSIENT_CTR_ERROR.test(e.detail),
        giveUp: (e, attempts) =>
          e instanceof CtrImportFailed
            ? new InfrastructureError(`[${node.name}] importing the test image with \`ctr images import\` failed${attempts > 1 ? ` (after ${attempts} attempts)` : ''}: exit ${e.code}: ${e.detail}`)
            : e,
      },
    );
  } finally {
    await node.exec(`rm -f ${sh(remote)}`);
  }
}
