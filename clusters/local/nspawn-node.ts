/**
 * A throwaway "node with a real systemd" for tests: a Debian bookworm rootfs
 * (debootstrap, cached as a tarball) booted with systemd-nspawn, running
 * containerd under systemd and an sshd reachable on 127.0.0.1:<port>.
 *
 * Host assumptions: running as root, no host systemd (hence --keep-unit and
 * --register=no), debootstrap + systemd-container + openssh-client installed,
 * a Debian mirror configured in the host's apt sources.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { accessSync, closeSync, constants as fsc, existsSync, openSync, readFileSync, readdirSync } from "node:fs";
import { chmod, mkdir, readFile, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { delimiter, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { waitForSshd } from "../../harness/node.ts";

export interface RootfsOptions {
  cacheDir: string;
  onProgress?: (msg: string) => void;
}

export interface NspawnNodeOptions {
  /** Machine name, e.g. "gve2e-sysd-1" (also the hostname inside). */
  name: string;
  /** A dir this node owns; rootfs is unpacked at <stateDir>/rootfs and removed on stop(). */
  stateDir: string;
  /** From ensureNspawnRootfs. */
  rootfsTarball: string;
  /** sshd inside listens on 127.0.0.1:<sshPort> (nspawn shares the host network namespace). */
  sshPort: number;
  /** An OpenSSH public key line, installed in /root/.ssh/authorized_keys inside. */
  authorizedKey: string;
  /** Boot + ssh readiness timeout, default 60000. */
  timeoutMs?: number;
  onProgress?: (msg: string) => void;
}

const SUITE = "bookworm";
const VARIANT = "minbase";
const PACKAGES = [
  "systemd",
  "systemd-sysv",
  "dbus",
  "containerd",
  "runc",
  "openssh-server",
  "iproute2",
  "procps",
  "util-linux",
];
/** Bump when the in-rootfs customisation below changes, so old cache entries are not reused. */
const RECIPE_VERSION = 1;

/**
 * Units that cannot work in a container sharing the host network, or that would
 * only add boot time / background noise (apt timers would try the network).
 */
const MASKED_UNITS = [
  "systemd-networkd-wait-online.service",
  "systemd-firstboot.service",
  "console-getty.service",
  "getty@.service",
  "apt-daily.timer",
  "apt-daily-upgrade.timer",
  "fstrim.timer",
  "dpkg-db-backup.timer",
  "e2scrub_all.timer",
];

const CONTAINERD_CONFIG = `version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "gvisor-e2e.local/pause:1"
  # The machine forbids negative oom_score_adj (no CAP_SYS_RESOURCE), so the
  # CRI plugin must not try to lower the score of sandboxes below its own.
  restrict_oom_score_adj = true
`;

/**
 * Debian's containerd.service sets OOMScoreAdjust=-999, which fails without
 * CAP_SYS_RESOURCE and would keep containerd from starting at all.
 */
const CONTAINERD_DROPIN = `[Service]
OOMScoreAdjust=0
`;

// ---------------------------------------------------------------------------
// small helpers

function findBinary(name: string, pkg: string): string {
  // Root shells normally have sbin in PATH, but don't rely on it.
  const dirs = [...(process.env.PATH ?? "").split(delimiter), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];
  for (const d of dirs) {
    if (!d) continue;
    const p = join(d, name);
    try {
      accessSync(p, fsc.X_OK);
      return p;
    } catch {
      /* keep looking */
    }
  }
  throw new Error(`nspawn testbed: required binary '${name}' not found in PATH (install the Debian package '${pkg}')`);
}

function requireRoot(): void {
  if (typeof process.getuid === "function" && process.getuid() !== 0) {
    throw new Error("nspawn testbed: must run as root (debootstrap and systemd-nspawn need it)");
  }
}

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  tail: string[];
}

/** Runs a command, keeping the last lines of its output for error messages. */
function run(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; onLine?: (line: string) => void; keep?: number } = {},
): Promise<RunResult> {
  const keep = opts.keep ?? 40;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: opts.env ?? process.env });
    const tail: string[] = [];
    const feed = (stream: NodeJS.ReadableStream): void => {
      let buf = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk: string) => {
        buf += chunk;
        let i: number;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          tail.push(line);
          if (tail.length > keep) tail.shift();
          opts.onLine?.(line);
        }
      });
      stream.on("end", () => {
        if (buf) {
          tail.push(buf);
          if (tail.length > keep) tail.shift();
          opts.onLine?.(buf);
        }
      });
    };
    feed(child.stdout!);
    feed(child.stderr!);
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, tail }));
  });
}

async function runOk(cmd: string, args: string[], what: string, opts?: Parameters<typeof run>[2]): Promise<void> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(
      `nspawn testbed: ${what} failed (${r.signal ? `signal ${r.signal}` : `exit ${r.code}`}): ${cmd} ${args.join(" ")}\n` +
        r.tail.join("\n"),
    );
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Mount points at or below `dir`, deepest first (so they can be unmounted in order). */
function mountsUnder(dir: string): string[] {
  let info: string;
  try {
    info = readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return [];
  }
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: string[] = [];
  for (const line of info.split("\n")) {
    const mp = line.split(" ")[4];
    if (!mp) continue;
    const p = unescape(mp);
    if (p === dir || p.startsWith(dir + "/")) out.push(p);
  }
  return out.sort((a, b) => b.length - a.length);
}

/**
 * rm -rf that never crosses into a mount (a killed debootstrap can leave proc/sys
 * mounted inside its target; rm must not recurse into the host's /proc or /sys).
 */
export async function removeTree(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  for (const m of mountsUnder(dir)) {
    await run("umount", ["-l", m]);
  }
  await runOk("rm", ["-rf", "--one-file-system", dir], `removing ${dir}`);
}

// ---------------------------------------------------------------------------
// mirror discovery

/** The Debian mirror the host's apt uses for bookworm (never hard-coded here). */
export function findDebianMirror(): { uri: string; keyring?: string } {
  const isMain = (suite: string): boolean => suite === SUITE; // bookworm, not bookworm-security/-updates
  const candidates: { uri: string; keyring?: string }[] = [];

  const dir = "/etc/apt/sources.list.d";
  let files: string[] = [];
  try {
    files = readdirSync(dir).filter((f) => f.endsWith(".sources")).sort();
  } catch {
    /* no dir */
  }
  for (const f of files) {
    let text: string;
    try {
      text = readFileSync(join(dir, f), "utf8");
    } catch {
      continue;
    }
    // deb822: stanzas separated by blank lines; comment lines start with '#'.
    for (const stanza of text.split(/\n\s*\n/)) {
      const fields = new Map<string, string>();
      let last = "";
      for (const raw of stanza.split("\n")) {
        if (raw.startsWith("#")) continue;
        const cont = /^\s+(\S.*)$/.exec(raw);
        if (cont && last) {
          fields.set(last, `${fields.get(last) ?? ""} ${cont[1]}`);
          continue;
        }
        const m = /^([A-Za-z-]+):\s*(.*)$/.exec(raw);
        if (m) {
          last = m[1]!.toLowerCase();
          fields.set(last, m[2]!.trim());
        }
      }
      if ((fields.get("enabled") ?? "yes").toLowerCase() === "no") continue;
      const types = (fields.get("types") ?? "").split(/\s+/);
      if (!types.includes("deb")) continue;
      const suites = (fields.get("suites") ?? "").split(/\s+/);
      if (!suites.some(isMain)) continue;
      const signedBy = fields.get("signed-by")?.trim();
      for (const uri of (fields.get("uris") ?? "").split(/\s+/)) {
        if (/^https?:\/\//.test(uri) && !uri.includes("-security")) {
          candidates.push({ uri, keyring: signedBy && signedBy.startsWith("/") && existsSync(signedBy) ? signedBy : undefined });
        }
      }
    }
  }

  if (candidates.length === 0) {
    let text = "";
    try {
      text = readFileSync("/etc/apt/sources.list", "utf8");
    } catch {
      /* none */
    }
    for (const raw of text.split("\n")) {
      const line = raw.replace(/#.*/, "").trim();
      // deb [options] URI suite components...
      const m = /^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)/.exec(line);
      if (!m || !isMain(m[3]!) || !/^https?:\/\//.test(m[2]!) || m[2]!.includes("-security")) continue;
      const sb = /signed-by=(\S+)/.exec(m[1] ?? "")?.[1];
      candidates.push({ uri: m[2]!, keyring: sb && existsSync(sb) ? sb : undefined });
    }
  }

  const first = candidates[0];
  if (!first) {
    throw new Error(
      `nspawn testbed: no Debian '${SUITE}' mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list`,
    );
  }
  return first;
}

// ---------------------------------------------------------------------------
// rootfs cache

/**
 * Builds (once) and caches a rootfs tarball keyed by a hash of suite+package list;
 * returns the tarball path. Builds into a temp dir and renames atomically, so a
 * killed build never leaves a half cache entry.
 */
export async function ensureNspawnRootfs(opts: RootfsOptions): Promise<string> {
  const progress = opts.onProgress ?? (() => {});
  const key = createHash("sha256")
    .update(JSON.stringify({ suite: SUITE, variant: VARIANT, packages: PACKAGES, masked: MASKED_UNITS, recipe: RECIPE_VERSION }))
    .digest("hex")
    .slice(0, 16);
  const tarball = join(opts.cacheDir, `nspawn-${SUITE}-${key}.tar`);
  if (existsSync(tarball)) return tarball;

  requireRoot();
  const debootstrap = findBinary("debootstrap", "debootstrap");
  const tar = findBinary("tar", "tar");
  const chroot = findBinary("chroot", "coreutils");
  await mkdir(opts.cacheDir, { recursive: true });

  // Clear leftovers of builds whose process is gone (killed mid-build).
  for (const e of await readdir(opts.cacheDir)) {
    const m = /^\.build-.*-(\d+)-[0-9a-f]+$/.exec(e);
    if (m && !pidAlive(Number(m[1]))) {
      progress(`removing stale build dir ${e}`);
      await removeTree(join(opts.cacheDir, e));
    }
  }

  const mirror = findDebianMirror();
  const buildDir = join(opts.cacheDir, `.build-${key}-${process.pid}-${randomBytes(4).toString("hex")}`);
  const rootfs = join(buildDir, "rootfs");
  await mkdir(rootfs, { recursive: true });
  try {
    progress(`debootstrap ${VARIANT} ${SUITE} from ${mirror.uri} into ${rootfs}`);
    const t0 = Date.now();
    const args = [`--variant=${VARIANT}`, `--include=${PACKAGES.join(",")}`];
    if (mirror.keyring) args.push(`--keyring=${mirror.keyring}`);
    args.push(SUITE, rootfs, mirror.uri);
    await runOk(debootstrap, args, "debootstrap", {
      env: { ...process.env, LC_ALL: "C", DEBIAN_FRONTEND: "noninteractive" },
      // Per-package lines are hundreds; pass on only the phase lines.
      onLine: (l) => {
        if (/^[IWE]: /.test(l) && !/^I: (Retrieving|Validating|Extracting) /.test(l)) {
          progress(`debootstrap: ${l}`);
        }
      },
      keep: 60,
    });
    progress(`debootstrap done in ${((Date.now() - t0) / 1000).toFixed(1)}s; customising`);

    await customiseRootfs(rootfs, chroot);

    const partial = join(buildDir, "rootfs.tar");
    await runOk(tar, ["--numeric-owner", "-C", rootfs, "-cpf", partial, "."], "creating rootfs tarball");
    // Atomic publish: same filesystem, so rename either happens fully or not at all.
    await rename(partial, tarball);
    progress(`cached rootfs tarball ${tarball} (${((await stat(tarball)).size / 2 ** 20).toFixed(0)} MiB)`);
  } finally {
    await removeTree(buildDir);
  }
  return tarball;
}

async function customiseRootfs(rootfs: string, chroot: string): Promise<void> {
  const p = (rel: string): string => join(rootfs, rel);

  // Host keys generated by the openssh-server postinst would be shared by every
  // node; each node gets its own key at start() instead.
  for (const f of await readdir(p("etc/ssh"))) {
    if (f.startsWith("ssh_host_")) await rm(p(`etc/ssh/${f}`));
  }

  // Empty machine-id: no ID baked into the image (start() writes a fresh one per node).
  await writeFile(p("etc/machine-id"), "");
  await rm(p("var/lib/dbus/machine-id"), { force: true });

  await mkdir(p("etc/containerd"), { recursive: true });
  await writeFile(p("etc/containerd/config.toml"), CONTAINERD_CONFIG);
  await mkdir(p("etc/systemd/system/containerd.service.d"), { recursive: true });
  await writeFile(p("etc/systemd/system/containerd.service.d/10-gvisor-e2e.conf"), CONTAINERD_DROPIN);

  // systemctl in a chroot works offline (just symlinks); enable even if the
  // package postinst already did, so the image doesn't depend on that.
  await runOk(chroot, [rootfs, "systemctl", "enable", "ssh.service", "containerd.service"], "enabling units");
  const present: string[] = [];
  for (const u of MASKED_UNITS) {
    // Masking a unit that doesn't exist is harmless, but keep the log honest.
    if (existsSync(p(`lib/systemd/system/${u}`)) || existsSync(p(`usr/lib/systemd/system/${u}`))) present.push(u);
  }
  if (present.length) await runOk(chroot, [rootfs, "systemctl", "mask", ...present], "masking units");

  // Trim what tests never need; saves space and unpack time per node.
  for (const d of ["var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"]) {
    const full = p(d);
    if (!existsSync(full)) continue;
    for (const e of await readdir(full)) {
      if (e === "partial" || e === "lock") continue;
      await rm(join(full, e), { recursive: true, force: true });
    }
  }
}

// ---------------------------------------------------------------------------
// node

function consoleTail(path: string, n = 20): string {
  try {
    // Strip the colour escapes systemd writes to the console; they only clutter error messages.
    const lines = readFileSync(path, "utf8").replace(/\x1b\[[0-9;]*m/g, "").replace(/\r/g, "").split("\n");
    while (lines.length && lines[lines.length - 1] === "") lines.pop();
    return lines.slice(-n).join("\n");
  } catch {
    return "(no console log)";
  }
}

function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function portInUse(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host: "127.0.0.1", port });
    sock.on("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.on("error", () => resolve(false));
  });
}

export class NspawnNode {
  readonly name: string;
  readonly sshPort: number;
  /** "[127.0.0.1]:<port> ssh-ed25519 AAAA..." for the node's sshd host key. */
  readonly knownHostsLine: string;
  /** The systemd-nspawn process. */
  readonly pid: number;

  private readonly stateDir: string;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private stopping: Promise<void> | undefined;
  private readonly progress: (msg: string) => void;

  private constructor(init: {
    name: string;
    sshPort: number;
    knownHostsLine: string;
    stateDir: string;
    child: ChildProcess;
    progress: (msg: string) => void;
  }) {
    this.name = init.name;
    this.sshPort = init.sshPort;
    this.knownHostsLine = init.knownHostsLine;
    this.stateDir = init.stateDir;
    this.pid = init.child.pid!;
    this.progress = init.progress;
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      this.exitInfo = { code, signal };
    };
    if (init.child.exitCode !== null || init.child.signalCode !== null) onExit(init.child.exitCode, init.child.signalCode);
    else init.child.once("exit", onExit);
  }

  static async start(opts: NspawnNodeOptions): Promise<NspawnNode> {
    const progress = opts.onProgress ?? (() => {});
    const timeoutMs = opts.timeoutMs ?? 60_000;
    if (!/^[a-zA-Z0-9][a-zA-Z0-9-]{0,62}$/.test(opts.name)) {
      throw new Error(`nspawn testbed: invalid machine name '${opts.name}' (must be a valid hostname label)`);
    }
    if (!/^(ssh-|ecdsa-|sk-)\S+ \S+/.test(opts.authorizedKey.trim())) {
      throw new Error("nspawn testbed: authorizedKey must be an OpenSSH public key line");
    }
    requireRoot();
    const nspawn = findBinary("systemd-nspawn", "systemd-container");
    const sshKeygen = findBinary("ssh-keygen", "openssh-client");
    const tar = findBinary("tar", "tar");
    if (!existsSync(opts.rootfsTarball)) throw new Error(`nspawn testbed: rootfs tarball ${opts.rootfsTarball} does not exist`);
    // nspawn shares the host network: a listener already on the port would make
    // readiness succeed against the wrong sshd.
    if (await portInUse(opts.sshPort)) {
      throw new Error(`nspawn testbed: 127.0.0.1:${opts.sshPort} is already in use; cannot start node ${opts.name}`);
    }

    const rootfs = join(opts.stateDir, "rootfs");
    const consoleLog = join(opts.stateDir, "console.log");
    await mkdir(opts.stateDir, { recursive: true });
    await removeTree(rootfs); // a previous run may have been killed before stop()
    await mkdir(rootfs);
    const cleanupRootfs = async (): Promise<void> => {
      await removeTree(rootfs).catch(() => {});
    };

    try {
      const tUnpack = Date.now();
      await runOk(tar, ["--numeric-owner", "-xpf", opts.rootfsTarball, "-C", rootfs], "unpacking rootfs");
      progress(`unpacked rootfs for ${opts.name} in ${((Date.now() - tUnpack) / 1000).toFixed(1)}s`);
      await NspawnNode.configure(rootfs, opts, sshKeygen);
    } catch (e) {
      await cleanupRootfs();
      throw e;
    }
    const hostPub = (await readFile(join(rootfs, "etc/ssh/ssh_host_ed25519_key.pub"), "utf8")).trim().split(/\s+/);
    const hostPart = opts.sshPort === 22 ? "127.0.0.1" : `[127.0.0.1]:${opts.sshPort}`;
    const knownHostsLine = `${hostPart} ${hostPub[0]} ${hostPub[1]}`;

    const logFd = openSync(consoleLog, "w");
    let child: ChildProcess;
    try {
      child = spawn(
        nspawn,
        [
          "-b",
          "--register=no", // no host systemd/machined to register with
          "--keep-unit", // no host systemd to create a scope unit
          "-M",
          opts.name,
          "-D",
          rootfs,
          // stdin is not a tty; say so explicitly rather than rely on auto-detection.
          "--console=read-only",
          // SIGTERM to nspawn -> SIGRTMIN+4 to the container's systemd = poweroff.
          "--kill-signal=SIGRTMIN+4",
        ],
        { detached: true, stdio: ["ignore", logFd, logFd] },
      );
    } finally {
      closeSync(logFd); // the child holds its own copy
    }
    // Don't let a forgotten node keep the test process alive; exit events still fire.
    child.unref();
    const spawnError = new Promise<Error>((resolve) => child.once("error", resolve));
    if (child.pid === undefined) {
      const err = await spawnError;
      await cleanupRootfs();
      throw new Error(`nspawn testbed: failed to spawn systemd-nspawn: ${err.message}`);
    }
    const node = new NspawnNode({ name: opts.name, sshPort: opts.sshPort, knownHostsLine, stateDir: opts.stateDir, child, progress });
    progress(`booting ${opts.name} (nspawn pid ${node.pid}), waiting for sshd on 127.0.0.1:${opts.sshPort}`);

    const t0 = Date.now();
    const gone = () => {
      if (!node.exitInfo) return undefined;
      const how = node.exitInfo.signal ? `signal ${node.exitInfo.signal}` : `exit code ${node.exitInfo.code}`;
      return `systemd-nspawn for node ${opts.name} exited early with ${how}`;
    };
    try {
      const banner = await waitForSshd(`nspawn node ${opts.name}`, opts.sshPort, timeoutMs, { gone });
      progress(`${opts.name}: sshd answered (${banner}) ${((Date.now() - t0) / 1000).toFixed(1)}s after spawn`);
      return node;
    } catch (e) {
      // Take the tail before stop(), which would fill the log with shutdown lines.
      const tail = consoleTail(consoleLog);
      await node.stop();
      throw new Error(`${(e as Error).message}; last console lines (${consoleLog}):\n${tail}`);
    }
  }

  /** Per-node files, written into the unpacked rootfs before boot. */
  private static async configure(rootfs: string, opts: NspawnNodeOptions, sshKeygen: string): Promise<void> {
    const p = (rel: string): string => join(rootfs, rel);

    // Host key made here, so the known_hosts line is known without trusting the network.
    await runOk(sshKeygen, ["-q", "-t", "ed25519", "-N", "", "-C", `root@${opts.name}`, "-f", p("etc/ssh/ssh_host_ed25519_key")], "ssh-keygen (host key)");

    await mkdir(p("etc/ssh/sshd_config.d"), { recursive: true });
    await writeFile(
      p("etc/ssh/sshd_config.d/10-gvisor-e2e.conf"),
      [
        "# Written by gvisor-e2e nspawn testbed; nspawn shares the host network, hence loopback + per-node port.",
        `Port ${opts.sshPort}`,
        "ListenAddress 127.0.0.1",
        // Only the key we generated (and published in knownHostsLine); avoids errors about missing rsa/ecdsa keys.
        "HostKey /etc/ssh/ssh_host_ed25519_key",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "",
      ].join("\n"),
    );

    await mkdir(p("root/.ssh"), { recursive: true });
    await chmod(p("root/.ssh"), 0o700);
    await writeFile(p("root/.ssh/authorized_keys"), opts.authorizedKey.trim() + "\n", { mode: 0o600 });
    await chmod(p("root/.ssh/authorized_keys"), 0o600);

    // A distinct, initialised machine-id per node: no first-boot logic, no shared IDs between nodes.
    await writeFile(p("etc/machine-id"), randomBytes(16).toString("hex") + "\n");
    await writeFile(p("etc/hostname"), `${opts.name}\n`);
    await writeFile(p("etc/hosts"), `127.0.0.1\tlocalhost\n127.0.1.1\t${opts.name}\n::1\tlocalhost ip6-localhost ip6-loopback\n`);
  }

  /** Powers off (SIGTERM -> SIGRTMIN+4 inside, up to 15 s, then SIGKILL), then removes <stateDir>/rootfs. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private doStop(): Promise<void> {
    return powerOff({ pid: this.pid, name: this.name, stateDir: this.stateDir, running: () => !this.exitInfo, progress: this.progress });
  }
}

/**
 * Powers an nspawn node off: SIGTERM (nspawn turns it into --kill-signal, SIGRTMIN+4 = poweroff,
 * for the container's systemd; signalling nspawn with SIGRTMIN+4 itself would just kill it), up to
 * 15 s, then SIGKILL; then removes <stateDir>/rootfs. `running()` says whether that nspawn is still
 * there (for a recorded pid: still ours, so a recycled pid is never signalled).
 */
async function powerOff(o: { pid: number; name: string; stateDir: string; running: () => boolean; progress?: (msg: string) => void }): Promise<void> {
  const kill = (pid: number, signal: NodeJS.Signals) => {
    try {
      process.kill(pid, signal);
    } catch {
      /* already gone */
    }
  };
  const stopped = async (ms: number) => {
    const deadline = Date.now() + ms;
    while (o.running() && Date.now() < deadline) await sleep(100);
    return !o.running();
  };
  if (o.running()) {
    o.progress?.(`powering off ${o.name} (nspawn pid ${o.pid})`);
    kill(o.pid, "SIGTERM");
    if (!(await stopped(15_000)) && o.running()) {
      o.progress?.(`${o.name} did not power off in 15s; SIGKILL`);
      // The container's init is a child of nspawn in its own session and PID namespace; killing
      // it takes the whole namespace down, which killing nspawn alone would not. Then the whole
      // process group (nspawn was started detached as its group leader), then nspawn.
      for (const c of childPids(o.pid)) kill(c, "SIGKILL");
      kill(-o.pid, "SIGKILL");
      kill(o.pid, "SIGKILL");
      await stopped(5_000);
    }
  }
  await removeTree(join(o.stateDir, "rootfs"));
}

/** True while `pid` is still the systemd-nspawn of machine `name` (a recycled pid is not). */
export function nspawnAlive(pid: number, name: string): boolean {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0');
    return cmd.some((a) => a.endsWith('systemd-nspawn')) && cmd.includes(name);
  } catch {
    return false;
  }
}

/**
 * Stops a node recorded by an earlier process (`down` after a crash): the same power-off and
 * SIGKILL fallback as stop(), driven by the recorded pid. The pid is only signalled while it
 * still is that node's systemd-nspawn, so a recycled pid is never touched.
 */
export function stopRecordedNspawn(rec: { pid: number; name: string; stateDir: string }): Promise<void> {
  return powerOff({ ...rec, running: () => nspawnAlive(rec.pid, rec.name) });
}
