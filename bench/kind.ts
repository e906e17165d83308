// kind costs, as ratios measured in one run on one machine:
//   1. cold start: the harness's `up` + `install` on kind against `kind create cluster` alone, on the
//      same (already loaded) node image with the same kind config: what the harness adds (pod
//      networking, test image, gVisor install) over what kind itself takes;
//   2. the warm full run (`gvisor-e2e run`: up, install, five suites, reports, down) on kind against the
//      same on the embedded local cluster (fixtures/local.yaml's shape: one gVisor and one plain pool).
// This machine has no Docker engine: a private dockerd in a user namespace (tests/e2e/dockerd.ts, as
// the kind e2e test uses) serves kind, so the numbers include its overhead alike on both kind sides.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { parseConfig } from '../clusters/index.ts';
import { renderKindConfig } from '../clusters/kind/config.ts';
import { kindBinary, type KindCluster } from '../clusters/kind/index.ts';
import { ensureLocalNodeImage, LOCAL_IMAGE_NAMES } from '../clusters/kind/node-image.ts';
import type { Config } from '../harness/config.ts';
import { ROOT_DIR } from '../harness/paths.ts';
import { startPrivateDockerd } from '../tests/e2e/dockerd.ts';

const work = mkdtempSync(join(tmpdir(), 'gvisor-e2e-bench-kind-'));
const d = await startPrivateDockerd({ userns: true, link: true });
process.env.DOCKER_HOST = d.host;
const cli = (args: string[]) => {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT_DIR, 'bin/gvisor-e2e.ts'), ...args], { cwd: ROOT_DIR, encoding: 'utf8', timeout: 1_800_000 });
  if (r.status !== 0) throw new Error(`gvisor-e2e ${args.join(' ')} exited ${r.status}: ${r.stderr.slice(-1500)}`);
  return (performance.now() - t0) / 1000;
};
try {
  const kindCfg = {
    apiVersion: 'gvisor-e2e.dev/v1alpha1',
    kind: 'Config',
    cluster: {
      provider: 'kind', name: 'gve2e-bench', stateDir: join(work, 'state-kind'), nodeImage: 'local', apiServerAddress: d.address, apiServerPort: 6443, wait: '3m',
      pools: [{ name: 'gvisor', nodes: 1 }, { name: 'plain', nodes: 1 }],
      kubeadmConfigPatches: ['kind: KubeletConfiguration\nfeatureGates: { KubeletInUserNamespace: true }\n'],
    },
    gvisor: { pools: ['gvisor'] },
    reportsDir: join(work, 'reports'),
  };
  const kindFile = join(work, 'kind.yaml');
  writeFileSync(kindFile, stringify(kindCfg));
  const localFile = join(work, 'local.yaml');
  writeFileSync(localFile, stringify({ ...kindCfg, cluster: { provider: 'local', name: 'gve2e-bench-local', stateDir: join(work, 'state-local'), kubernetes: true, pools: [{ name: 'gvisor' }, { name: 'plain' }] } }));

  // The node image is loaded once, outside every measurement (both kind sides boot the same image).
  const image = await ensureLocalNodeImage();
  const cfg = parseConfig(stringify(kindCfg), kindFile) as Config & { cluster: KindCluster };
  const cgroupV1 = execFileSync('docker', ['info', '--format', '{{.CgroupVersion}}'], { encoding: 'utf8' }).trim() === '1';
  const rawFile = join(work, 'kind-raw.yaml');
  writeFileSync(rawFile, renderKindConfig({ ...cfg, cluster: { ...cfg.cluster, name: 'gve2e-bench-raw' } }, { image, cgroupV1, localImage: { etcdTag: LOCAL_IMAGE_NAMES.etcdTag } }));
  const kind = await kindBinary(cfg.cluster);

  const t0 = performance.now();
  execFileSync(kind, ['create', 'cluster', '--name', 'gve2e-bench-raw', '--config', rawFile, '--kubeconfig', join(work, 'raw-kubeconfig')], { stdio: 'ignore' });
  const kindAlone = (performance.now() - t0) / 1000;
  execFileSync(kind, ['delete', 'cluster', '--name', 'gve2e-bench-raw', '--kubeconfig', join(work, 'raw-kubeconfig')], { stdio: 'ignore' });

  const up = cli(['-c', kindFile, 'up']);
  const install = cli(['-c', kindFile, 'install']);
  cli(['-c', kindFile, 'down']);
  await ensureLocalNodeImage(); // down removed the image the harness loaded; the warm run starts from it loaded
  const kindRun = cli(['-c', kindFile, 'run']);
  const localRun = cli(['-c', localFile, 'run']);

  const result = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryGiB: +(totalmem() / 2 ** 30).toFixed(1), loadAverageAtStart: loadavg().map((x) => +x.toFixed(2)), kernel: execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim(), node: process.version, dockerCgroupVersion: cgroupV1 ? 1 : 2 },
    nodeImage: image,
    seconds: { kindCreateAlone: +kindAlone.toFixed(1), harnessUp: +up.toFixed(1), harnessInstall: +install.toFixed(1), kindFullRun: +kindRun.toFixed(1), localFullRun: +localRun.toFixed(1) },
    ratios: { coldStartVsKindCreate: +((up + install) / kindAlone).toFixed(2), warmFullRunKindVsLocal: +(kindRun / localRun).toFixed(2) },
    note: 'coldStartVsKindCreate = (harness up + install) / kind create alone, same image and config, image already loaded. warmFullRunKindVsLocal = `run` on kind / `run` on the local provider, caches warm. One gVisor worker and one plain worker each; private dockerd in a user namespace.',
  };
  const file = join(ROOT_DIR, 'bench', 'results', `kind-${result.date.slice(0, 10)}.json`);
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  console.log(JSON.stringify(result, null, 2));
  console.log(`written to ${file}`);
} finally {
  await d.stop();
  rmSync(work, { recursive: true, force: true });
}
