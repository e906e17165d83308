import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { criProtoPath } from './binaries.ts';
import { InfrastructureError, TimeoutError } from './errors.ts';
import { criInfrastructureFault } from './faults.ts';
import type { NodeAccess } from './node.ts';
import { untilWoken } from './wait.ts';

// The harness speaks the CRI to containerd directly over gRPC, exactly as the kubelet does,
// using k8s.io/cri-api's api.proto (crictl could not be built here). For remote nodes the
// containerd socket is reached through the node's openUnixSocket (an SSH stream-local forward, or a
// forwarder in a Docker exec on kind nodes) behind a private unix socket.

type Call = (req: object, opts: { deadline: Date }, cb: (err: grpc.ServiceError | null, res: any) => void) => void;
type RuntimeService = grpc.Client & Record<string, Call>;

let serviceCtor: Promise<grpc.ServiceClientConstructor> | undefined;

async function runtimeServiceCtor(): Promise<grpc.ServiceClientConstructor> {
  serviceCtor ??= (async () => {
    const def = await protoLoader.load(await criProtoPath(), { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
    const pkg = grpc.loadPackageDefinition(def) as unknown as { runtime: { v1: { RuntimeService: grpc.ServiceClientConstructor } } };
    return pkg.runtime.v1.RuntimeService;
  })();
  return serviceCtor;
}

const TUNNEL_PREFIX = 'gvisor-e2e-cri-';

/** Removes tunnel socket dirs whose process died without close() (a killed run); the pid is in the name. */
function sweepStaleTunnelDirs(): void {
  for (const e of readdirSync(tmpdir())) {
    const pid = e.startsWith(TUNNEL_PREFIX) ? Number(e.slice(TUNNEL_PREFIX.length).split('-')[0]) : NaN;
    if (Number.isInteger(pid) && pid > 0 && !existsSync(`/proc/${pid}`)) rmSync(join(tmpdir(), e), { recursive: true, force: true });
  }
}

export interface ContainerStatus {
  id: string;
  state: 'CONTAINER_CREATED' | 'CONTAINER_RUNNING' | 'CONTAINER_EXITED' | 'CONTAINER_UNKNOWN';
  exit_code: number;
  reason: string;
  message: string;
  log_path: string;
}

export class CriClient {
  private constructor(
    private readonly node: NodeAccess,
    private readonly client: RuntimeService,
    private readonly cleanup: () => void,
    readonly socket: string,
    private readonly timeoutMs: number,
    private readonly lastTunnelError: () => string | undefined = () => undefined,
  ) {}

  static async connect(node: NodeAccess, socket: string, timeoutMs = 60_000): Promise<CriClient> {
    const Ctor = await runtimeServiceCtor();
    let target: string;
    let cleanup = () => {};
    let tunnelError: string | undefined;
    if (node.config.access.type === 'local') {
      target = `unix://${socket}`;
    } else {
      // Connect to the node first, so an SSH problem surfaces as itself, not as "CRI unavailable".
      await node.exec('true');
      // A private local socket (0700 dir) whose every connection is forwarded to the node's socket.
      sweepStaleTunnelDirs();
      const dir = mkdtempSync(join(tmpdir(), `${TUNNEL_PREFIX}${process.pid}-`));
      const local = join(dir, 'cri.sock');
      const server: Server = createServer((conn) => {
        node.openUnixSocket(socket).then(
          (remote) => {
            conn.pipe(remote).pipe(conn);
            const end = () => {
              conn.destroy();
              remote.destroy();
            };
            conn.on('error', end).on('close', end);
            remote.on('error', end).on('close', end);
          },
          (e: Error) => {
            tunnelError = e.message;
            conn.destroy();
          },
        );
      });
      await new Promise<void>((res, rej) => server.listen(local, res).once('error', rej));
      target = `unix://${local}`;
      cleanup = () => {
        server.close();
        rmSync(dir, { recursive: true, force: true });
      };
    }
    const client = new Ctor(target, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
    }) as unknown as RuntimeService;
    const cri = new CriClient(node, client, cleanup, socket, timeoutMs, () => tunnelError);
    return cri;
  }

  private call<T>(method: string, req: object, timeoutMs = this.timeoutMs): Promise<T> {
    return new Promise((res, rej) => {
      const fn = this.client[method];
      if (!fn) {
        rej(new InfrastructureError(`CRI method ${method} unknown`));
        return;
      }
      fn.call(this.client, req, { deadline: new Date(Date.now() + timeoutMs) }, (err, out) => {
        if (!err) return res(out as T);
        if (err.code === grpc.status.DEADLINE_EXCEEDED) rej(new TimeoutError(`CRI ${method} on ${this.node.name} (${this.socket})`, timeoutMs));
        else if (err.code === grpc.status.UNAVAILABLE) {
          const why = this.lastTunnelError() ?? err.details;
          rej(new InfrastructureError(`CRI ${method} on ${this.node.name}: containerd at ${this.socket} is unavailable: ${why}`));
        }
        else if (criInfrastructureFault(err)) rej(new InfrastructureError(`CRI ${method} on ${this.node.name} could not be served: ${err.details || err.message}`, { cause: err }));
        else rej(new CriError(method, this.node.name, err));
      });
    });
  }

  version(): Promise<{ runtime_name: string; runtime_version: string }> {
    return this.call('Version', {});
  }

  /** CRI Status with verbose info: `info.config` is containerd's effective CRI config as JSON. */
  async status(): Promise<{ conditions: { type: string; status: boolean; reason: string; message: string }[]; info: Record<string, string> }> {
    const r = await this.call<{ status: { conditions: any[] }; info: Record<string, string> }>('Status', { verbose: true });
    return { conditions: r.status?.conditions ?? [], info: r.info ?? {} };
  }

  /** Runtime handlers containerd's CRI actually loaded (from its effective config). */
  async runtimeHandlers(): Promise<Record<string, { runtimeType: string; options?: Record<string, unknown> }>> {
    const st = await this.status();
    const raw = st.info.config;
    if (!raw) throw new InfrastructureError(`CRI Status on ${this.node.name} returned no config info`);
    const cfg = JSON.parse(raw) as { containerd?: { runtimes?: Record<string, any> } };
    return cfg.containerd?.runtimes ?? {};
  }

  async runPodSandbox(config: object, runtimeHandler: string): Promise<string> {
    const r = await this.call<{ pod_sandbox_id: string }>('RunPodSandbox', { config, runtime_handler: runtimeHandler }, Math.max(this.timeoutMs, 120_000));
    return r.pod_sandbox_id;
  }

  async podSandboxStatus(id: string): Promise<{ status: any; info: Record<string, string> }> {
    return this.call('PodSandboxStatus', { pod_sandbox_id: id, verbose: true });
  }

  async listPodSandboxes(labels: Record<string, string>): Promise<{ id: string; metadata: { name: string } }[]> {
    const r = await this.call<{ items: any[] }>('ListPodSandbox', { filter: { label_selector: labels } });
    return r.items ?? [];
  }

  async createContainer(podId: string, config: object, sandboxConfig: object): Promise<string> {
    const r = await this.call<{ container_id: string }>('CreateContainer', { pod_sandbox_id: podId, config, sandbox_config: sandboxConfig });
    return r.container_id;
  }

  async startContainer(id: string): Promise<void> {
    await this.call('StartContainer', { container_id: id });
  }

  async containerStatus(id: string): Promise<ContainerStatus> {
    const r = await this.call<{ status: ContainerStatus }>('ContainerStatus', { container_id: id });
    return r.status;
  }

  /**
   * Waits for a container to exit, woken by the CRI's container event stream (containerd 1.7+)
   * rather than by polling; a status read every second stays as the safety net, and is all there
   * is where the runtime does not serve events (containerd 1.6).
   */
  async waitForExit(id: string, what: string, timeoutMs: number): Promise<ContainerStatus> {
    // Checked at once too: it may have exited before the stream was open.
    const exited = async () => {
      const st = await this.containerStatus(id);
      return st.state === 'CONTAINER_EXITED' ? st : undefined;
    };
    return untilWoken(what, timeoutMs, exited, {
      tickMs: 1000,
      events: (wake) => {
        const stream = (this.client as unknown as { GetContainerEvents?: (req: object) => grpc.ClientReadableStream<{ container_id: string; container_event_type: string }> }).GetContainerEvents?.call(this.client, {});
        stream?.on('data', (ev) => {
          if (ev.container_id === id && ev.container_event_type === 'CONTAINER_STOPPED_EVENT') wake();
        });
        stream?.on('error', () => undefined); // UNIMPLEMENTED on containerd 1.6, CANCELLED on close: the ticker covers both
        return () => stream?.cancel();
      },
    });
  }

  async stopPodSandbox(id: string): Promise<void> {
    await this.call('StopPodSandbox', { pod_sandbox_id: id });
  }

  async removePodSandbox(id: string): Promise<void> {
    await this.call('RemovePodSandbox', { pod_sandbox_id: id });
  }

  close(): void {
    this.client.close();
    this.cleanup();
  }
}

export class CriError extends Error {
  override readonly name = 'CriError';
  constructor(
    readonly method: string,
    node: string,
    readonly grpcError: grpc.ServiceError,
  ) {
    super(`CRI ${method} on ${node} failed: ${grpcError.details || grpcError.message}`);
  }
}
