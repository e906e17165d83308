// `gvisor-e2e init [local|nodes|existing|kind|vm]`: a commented starter config for each kind of
// cluster, valid as written (the files it names — SSH keys, known_hosts, a kubeconfig — are yours to put there).
import { existsSync, writeFileSync } from 'node:fs';
import { ConfigError } from '../harness/errors.ts';

export const INIT_KINDS = ['local', 'nodes', 'existing', 'kind', 'vm'] as const;
export type InitKind = (typeof INIT_KINDS)[number];

const HEAD = `# gvisor-e2e config. Unknown keys are errors; relative paths resolve against this file's directory.
# Check it with \`gvisor-e2e doctor\`; see what would run with \`gvisor-e2e run --list\`.
apiVersion: gvisor-e2e.dev/v1alpha1
kind: Config
`;

const GVISOR = `gvisor:
  pools: [gvisor]                 # the worker pool(s) that get gVisor (Gardener's ContainerRuntime pools)
  handler: runsc                  # Gardener: runsc; image-builder: gvisor
  runtimeClassName: gvisor
  binaryPath: /var/bin/containerruntimes   # image-builder: /usr/local/bin
  version: latest                 # or a release date yyyymmdd
  source: { type: build }         # build (Go module) | dir (path: ./bin) | release (gVisor's bucket, sha512-checked)
  configFlags:                    # like GVisorConfiguration: only net-raw is honoured
    net-raw: "false"
`;

const TAIL = `containerd:
  imagePullProgressTimeout: 5m0s  # image-builder's containerd_image_pull_progress_timeout
  enableLimitNoFile: true         # image-builder's containerd_enable_limit_no_file (LimitNOFILE=1048576 drop-in)
suites:
  skip: []                        # runsc-installation, sandbox-dmesg, net-raw, limit-nofile, runtimeclass-scheduling
timeouts: { command: 60s, container: 60s, containerdRestart: 60s }
reportsDir: reports               # <reportsDir>/<run-id>/summary.json, summary.md, junit.xml, html/
`;

const SSH = (host: string) => `{ type: ssh, host: ${host}, port: 22, user: root, privateKeyPath: ./id_ed25519, knownHostsPath: ./known_hosts }`;

const CLUSTERS: Record<InitKind, string> = {
  local: `# The embedded local cluster: throwaway nodes on this machine (as root), made by \`up\`, removed after \`run\`.
cluster:
  provider: local
  name: gvisor-e2e
  kubernetes: true                # etcd, kube-apiserver, scheduler and a kubelet per host node; false: containerd only
  pools:
    - name: gvisor
      nodes: 1
      kind: host                  # host: namespaces on this machine; systemd: a Debian booted with systemd-nspawn
    - name: plain                 # a pool without gVisor: the RuntimeClass must not schedule there
      nodes: 1
      kind: host
`,
  nodes: `# Your own hosts over SSH: install puts gVisor on them (journalled), down removes exactly that.
# Put your SSH private key at ./id_ed25519 and the hosts' keys in ./known_hosts (host keys are always verified).
cluster:
  provider: nodes
  nodes:
    - name: worker-1
      pool: gvisor
      access: ${SSH('10.0.0.5')}
      osFamily: auto              # auto (from /etc/os-release) | debian | ubuntu | flatcar | azurelinux | …
    - name: worker-2
      pool: default
      access: ${SSH('10.0.0.6')}
`,
  existing: `# A Kubernetes cluster the harness did not create (a Gardener shoot, say); only what it makes there is removed.
# Put the cluster's kubeconfig at ./kubeconfig (a secret: never logged, redacted from every report).
cluster:
  provider: existing
  kubeconfig: ./kubeconfig
  # context: my-context           # default: the kubeconfig's current-context
  install: false                  # false: test what is there; true: install what is missing (needs SSH to the gVisor pool)
  pools:                          # default: gvisor.pools, found by Gardener's label worker.gardener.cloud/pool=<name>
    - name: gvisor
  # nodes:                        # optional SSH access for the node-level checks (else they are skipped, saying why)
  #   - name: <node name>
  #     access: ${SSH('10.250.0.7')}
`,
  kind: `# A kind cluster (Kubernetes nodes as containers in a Docker engine; needs a running engine).
cluster:
  provider: kind
  name: gvisor-e2e-kind
  # nodeImage: kindest/node:v1.35.4   # default: pinned by gvisor-e2e
  wait: 5m
  pools:
    - name: gvisor
      nodes: 1
    - name: plain
      nodes: 1
`,
  vm: `# Hosts (VMs) the harness provisions over SSH (containerd 2.x, CNI) before the normal install.
# Put your SSH private key at ./id_ed25519 and the hosts' keys in ./known_hosts (host keys are always verified).
cluster:
  provider: vm
  # The harness runs a control plane on this machine and joins each host's kubelet (bootstrap token):
  # every suite runs. The hosts must reach this machine, and it their port 10250, by address.
  kubernetes: true
  hosts:
    - name: vm-1
      pool: gvisor
      address: 192.0.2.10
      port: 22
      user: root
      privateKeyPath: ./id_ed25519
      knownHostsPath: ./known_hosts
      osFamily: auto
    - name: vm-2
      pool: plain
      address: 192.0.2.11
      privateKeyPath: ./id_ed25519
      knownHostsPath: ./known_hosts
  # kubeconfig: ./admin.conf      # instead of kubernetes: true, the existing cluster these hosts are nodes of
`,
};

/** The starter config of `kind`. */
export function starterConfig(kind: InitKind): string {
  return `${HEAD}${CLUSTERS[kind]}${GVISOR}${TAIL}`;
}

/** Writes the starter config to `file`, never over an existing one. */
export function writeStarterConfig(kind: string, file: string): void {
  if (!(INIT_KINDS as readonly string[]).includes(kind)) {
    throw new ConfigError('command line', [{ path: 'init', message: `unknown kind "${kind}"; expected one of ${INIT_KINDS.join(', ')}` }]);
  }
  if (existsSync(file)) throw new ConfigError('command line', [{ path: 'init', message: `${file} exists; not overwritten (use --output to write elsewhere)` }]);
  writeFileSync(file, starterConfig(kind as InitKind), { flag: 'wx' });
}
