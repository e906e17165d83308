#!/usr/bin/env -S npx tsx
import { Command, CommanderError, Option } from 'commander';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { applyManifest, loadConfig } from '../clusters/index.ts';
import type { Config } from '../harness/config.ts';
import { loadManifest } from '../harness/manifests.ts';
import { exitCodeOf } from '../harness/report.ts';
import { ConfigError, ExitCode, InfrastructureError } from '../harness/errors.ts';
import { log, setVerbose } from '../harness/log.ts';
import { PACKAGE_DIR } from '../harness/paths.ts';
import { checkStateDir } from '../harness/state.ts';
import { INIT_KINDS, writeStarterConfig } from './init.ts';
import { clusterOf, doctor, down, install, installDryRun, listRun, report, repro, run, up, warm } from './app.ts';

// gvisor-e2e: provision a cluster, install gVisor like Gardener's runtime-gvisor extension and
// image-builder do, run the conformance suites, write reports. Exit codes (README "Exit codes"):
// 0 passed, 1 a check failed, 2 broken, 3 nothing was checked, 64 bad config or arguments.

const DEFAULT_CONFIG = join(PACKAGE_DIR, 'fixtures', 'local.yaml');

function configFile(path: string | undefined): string {
  return path ?? (existsSync('gvisor-e2e.yaml') ? 'gvisor-e2e.yaml' : DEFAULT_CONFIG);
}

/** `usesState`: the verb fills or removes the cluster's state directory (up, install, run, down, repro). */
function config(path: string | undefined, usesState = true): Config {
  const file = configFile(path);
  const manifest = program.opts().manifest as string | undefined;
  const cfg = manifest ? applyManifest(loadConfig(file), loadManifest(manifest)) : loadConfig(file);
  // The secrets the cluster holds are known to the redactor before anything is logged.
  const stateDir = clusterOf(cfg).info().stateDir;
  // A state directory the harness did not make is refused here, naming the config file (exit 64).
  if (usesState && stateDir) checkStateDir(stateDir, file);
  return cfg;
}

function retriesArg(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 10) throw new ConfigError('command line', [{ path: '--retries', message: `expected a whole number from 0 to 10, got "${v}"` }]);
  return n;
}

const program = new Command()
  .name('gvisor-e2e')
  .description('End-to-end tests for Kubernetes nodes running gVisor (runsc) under containerd')
  .option('-c, --config <file>', 'config file (default: ./gvisor-e2e.yaml, else the embedded local cluster)')
  .option('-m, --manifest <file>', "a customer's Gardener ContainerRuntime or Shoot manifest: its gVisor pools, binaryPath and configFlags override the config")
  .option('-v, --verbose', 'log every command run on nodes')
  .hook('preAction', (cmd) => setVerbose(Boolean(cmd.opts().verbose)))
  .exitOverride();

program
  .command('init')
  .description('write a commented starter config for a kind of cluster (default: ./gvisor-e2e.yaml, never over an existing file)')
  .argument('[kind]', INIT_KINDS.join(' | '), 'local')
  .option('-o, --output <file>', 'where to write it', 'gvisor-e2e.yaml')
  .action((kind: string, o: { output: string }) => {
    writeStarterConfig(kind, o.output);
    process.stdout.write(`wrote ${o.output} (${kind}); next: gvisor-e2e doctor\n`);
  });

program
  .command('doctor')
  .description('check that this machine and the nodes have what the chosen cluster needs, and say how to get what is missing')
  .action(async () => {
    process.exitCode = (await doctor(config(program.opts().config, false))) ? ExitCode.Passed : ExitCode.Broken;
  });

program
  .command('warm')
  .description("build and cache what the cluster needs (runsc + shim, CRI proto; for the embedded local cluster also containerd, Kubernetes, the test image, the Debian rootfs)")
  .action(async () => {
    await warm(config(program.opts().config, false));
  });

program
  .command('up')
  .description('create (or re-attach to) the cluster')
  .action(async () => {
    const nodes = await up(config(program.opts().config));
    for (const n of nodes) process.stdout.write(`${n.name}\tpool=${n.pool}\t${n.access.type === 'ssh' ? `ssh ${n.access.user}@${n.access.host}:${n.access.port}` : n.access.type}\n`);
  });

program
  .command('install')
  .description('install gVisor and the containerd customizations on the cluster (idempotent)')
  .option('--dry-run', 'print, per node, the diffs of the files install would change and the Kubernetes objects it would create; change nothing')
  .action(async (o: { dryRun?: boolean }) => {
    const cfg = config(program.opts().config);
    const nodes = await up(cfg);
    if (o.dryRun) process.stdout.write(await installDryRun(cfg, nodes));
    else await install(cfg, nodes);
  });

program
  .command('run')
  .description('up + install + run the suites + write reports (removes a local cluster afterwards unless --keep)')
  .addOption(new Option('-s, --suite <name...>', 'run only these suites'))
  .addOption(new Option('--skip <name...>', 'skip these suites'))
  .option('--keep', 'keep the local cluster after the run')
  .option('--no-install', 'do not install; test the cluster as it is')
  .addOption(new Option('--retries <n>', 'retry a failing check up to n times (each attempt is kept in the report)').argParser(retriesArg).default(0))
  .option('--rerun-failed [run]', 'run again only the failed and broken checks of an earlier run (a run id, a summary.json or its directory; default: the latest run), on the same cluster')
  .option('--list', 'print the suites and checks that would run, and why others would not; touches no node')
  .action(async (o: { suite?: string[]; skip?: string[]; keep?: boolean; install: boolean; retries: number; rerunFailed?: string | true; list?: boolean }) => {
    const rerunFailed = o.rerunFailed === true ? '' : o.rerunFailed;
    if (o.list) {
      process.stdout.write(await listRun(config(program.opts().config, false), { suites: o.suite, skip: o.skip, rerunFailed }));
      return;
    }
    const summary = await run(config(program.opts().config), { suites: o.suite, skip: o.skip, keep: o.keep, noInstall: !o.install, retries: o.retries, configPath: configFile(program.opts().config), rerunFailed });
    process.exitCode = exitCodeOf(summary);
  });

program
  .command('report')
  .description("print a run's verdict table and first failures again, from its summary.json; exits with the run's exit code")
  .argument('[run]', 'a run id under reportsDir, a summary.json or its directory (default: the latest run)')
  .action((ref: string | undefined) => {
    const r = report(config(program.opts().config, false), ref);
    process.stdout.write(r.text);
    process.exitCode = exitCodeOf(r.summary);
  });

program
  .command('repro')
  .description("reproduce a customer's setup: a local Kubernetes cluster with the pools, flags and customizations of a Shoot or ContainerRuntime (and image-builder variables), all suites, a report")
  .argument('<manifest>', 'a Gardener Shoot or ContainerRuntime manifest')
  .option('--image-builder <vars>', "the node image's image-builder variables (YAML or JSON)")
  .addOption(new Option('-s, --suite <name...>', 'run only these suites'))
  .addOption(new Option('--skip <name...>', 'skip these suites'))
  .option('--keep', 'keep the cluster afterwards')
  .action(async (manifest: string, o: { imageBuilder?: string; keep?: boolean; suite?: string[]; skip?: string[] }) => {
    // The embedded cluster's shape, unless -c names another config (its name, stateDir, reportsDir).
    const file = program.opts().config ?? DEFAULT_CONFIG;
    const base = loadConfig(file);
    const stateDir = clusterOf(base).info().stateDir;
    if (stateDir) checkStateDir(stateDir, file);
    process.exitCode = exitCodeOf(await repro(base, file, manifest, o));
  });

program
  .command('down')
  .description('remove the cluster and everything the harness created (uninstalls from "nodes" hosts)')
  .option('--keep-install', 'for "nodes" hosts: leave gVisor installed')
  .action(async (o: { keepInstall?: boolean }) => {
    await down(config(program.opts().config), { uninstall: !o.keepInstall });
  });

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) {
    process.exitCode = e.exitCode === 0 ? 0 : ExitCode.Usage;
  } else if (e instanceof ConfigError) {
    log('error', e.message);
    process.exitCode = ExitCode.Usage;
  } else if (e instanceof InfrastructureError) {
    log('error', e.message);
    process.exitCode = ExitCode.Broken;
  } else {
    log('error', `harness error: ${(e as Error).stack ?? String(e)}`);
    process.exitCode = ExitCode.Broken;
  }
}
