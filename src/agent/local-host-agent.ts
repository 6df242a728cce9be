/**
 * The agent for the machine the service runs on. Layout under the data
 * directory:
 *   tpm/<vm>/          the running vTPM's state, encrypted by swtpm (0700, files 0600);
 *                      a working copy: the vault holds the truth, and start rewrites it
 *   log/<vm>.log       swtpm's own log
 * and under the run directory:
 *   <vm>.sock, <vm>.pid
 */
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { EmulatorError, StateConflictError } from '../errors.js';
import { probeCapabilities, traitsOf } from '../swtpm/capabilities.js';
import type { CertificateAuthority } from '../swtpm/certificate-authority.js';
import { adoptSwtpm, launchSwtpm, terminateSwtpm, type InstancePaths, type SwtpmInstance } from '../swtpm/instance.js';
import { manufactureTpm } from '../swtpm/manufacture.js';
import type { TpmSpec } from '../spec/tpm-spec.js';
import type { HostAgent, HostDescription, ManufacturedVtpm, RunningVtpm, StateChange, VtpmExit, VtpmOnHost } from './host-agent.js';
import { StateWatcher } from './state-watcher.js';

export interface LocalHostAgentOptions {
  dataDir: string;
  runDir: string;
  /** A memory-backed directory for short-lived secret-bearing configuration. */
  scratchDir: string;
  authority: CertificateAuthority;
  logger: Logger;
  hostName?: string;
}

/** Unix socket paths are limited to 107 bytes by the kernel. */
const MAX_SOCKET_PATH = 107;
const UUID_LENGTH = 36;

/** The one file in which swtpm keeps a TPM's persistent state. */
export function stateFileName(spec: TpmSpec): string {
  return spec.version === '2.0' ? 'tpm2-00.permall' : 'tpm-00.permall';
}

interface Tracked {
  instance: SwtpmInstance;
  watcher: StateWatcher;
  /** Resolves once the final state and the exit have been reported. */
  exitReported: Promise<void>;
}

export class LocalHostAgent implements HostAgent {
  readonly hostName: string;
  private readonly instances = new Map<string, Tracked>();
  private readonly exitListeners: Array<(exit: VtpmExit) => void> = [];
  private readonly changeListeners: Array<(change: StateChange) => Promise<void>> = [];
  private description: HostDescription | undefined;

  private constructor(private readonly options: LocalHostAgentOptions) {
    this.hostName = options.hostName ?? hostname();
  }

  static async open(options: LocalHostAgentOptions): Promise<LocalHostAgent> {
    const socketLength = join(options.runDir, `${'0'.repeat(UUID_LENGTH)}.sock`).length;
    if (socketLength > MAX_SOCKET_PATH) {
      throw new EmulatorError(`run directory ${options.runDir} is too long for unix socket paths (${socketLength} > ${MAX_SOCKET_PATH} bytes): pass a shorter --run-dir`);
    }
    for (const dir of [join(options.dataDir, 'tpm'), join(options.dataDir, 'log'), options.runDir, options.scratchDir]) {
      await mkdir(dir, { recursive: true, mode: 0o700 });
    }
    const agent = new LocalHostAgent(options);
    await agent.adoptSurvivors();
    return agent;
  }

  private paths(vm: string): InstancePaths {
    return {
      stateDir: join(this.options.dataDir, 'tpm', vm),
      socket: this.socketPath(vm),
      pidFile: join(this.options.runDir, `${vm}.pid`),
      logFile: join(this.options.dataDir, 'log', `${vm}.log`),
    };
  }

  socketPath(vm: string): string {
    return join(this.options.runDir, `${vm}.sock`);
  }

  /** swtpm processes outlive a restart of the service; take back those still serving their socket. */
  private async adoptSurvivors(): Promise<void> {
    for (const file of await readdir(this.options.runDir)) {
      const vm = /^(.+)\.pid$/.exec(file)?.[1];
      if (vm === undefined) continue;
      const instance = await adoptSwtpm(this.paths(vm));
      const stateFile = instance && (await readdir(this.paths(vm).stateDir)).find((f) => f.endsWith('.permall'));
      if (instance && stateFile) {
        this.options.logger.info({ vm, pid: instance.pid }, 'adopted running swtpm');
        this.track(vm, instance, stateFile);
      } else {
        await this.removeRuntimeFiles(vm);
      }
    }
  }

  private reportChange(change: StateChange): Promise<void> {
    return Promise.all(this.changeListeners.map((listener) => listener(change))).then(() => undefined);
  }

  private track(vm: string, instance: SwtpmInstance, stateFile: string, initial?: Buffer): void {
    const watcher = new StateWatcher(this.paths(vm).stateDir, stateFile, (data) => this.reportChange({ vm, data, final: false }), initial);
    const exitReported = instance.exited.then(async ({ code, signal }) => {
      if (this.instances.get(vm) !== tracked) return;
      await watcher.close().catch((error: unknown) => this.options.logger.error({ vm, err: error }, 'the final state could not be reported'));
      this.instances.delete(vm);
      await this.removeRuntimeFiles(vm);
      const level = code === 0 || code === null ? 'info' : 'warn';
      this.options.logger[level]({ vm, code, signal }, 'swtpm exited');
      for (const listener of this.exitListeners) listener({ vm, code, signal });
    });
    const tracked: Tracked = { instance, watcher, exitReported };
    this.instances.set(vm, tracked);
    watcher.start();
  }

  private async removeRuntimeFiles(vm: string): Promise<void> {
    const { socket, pidFile } = this.paths(vm);
    await rm(socket, { force: true });
    await rm(pidFile, { force: true });
  }

  async describe(): Promise<HostDescription> {
    if (!this.description) {
      const capabilities = await probeCapabilities();
      this.description = { name: this.hostName, traits: traitsOf(capabilities), capabilities };
    }
    return this.description;
  }

  async manufacture(request: VtpmOnHost): Promise<ManufacturedVtpm> {
    if (this.instances.has(request.vm)) throw new StateConflictError(`vTPM ${request.vm} is running on ${this.hostName}; it cannot be manufactured again`);
    const { stateDir } = this.paths(request.vm);
    await rm(stateDir, { recursive: true, force: true });
    try {
      const ekCertificates = await manufactureTpm({
        vm: request.vm,
        spec: request.spec,
        stateDir,
        stateKey: request.stateKey,
        authority: this.options.authority,
        scratchRoot: this.options.scratchDir,
      });
      return { ekCertificates, state: await readFile(join(stateDir, stateFileName(request.spec))) };
    } finally {
      await rm(stateDir, { recursive: true, force: true });
    }
  }

  async start(request: VtpmOnHost & { state: Buffer }): Promise<RunningVtpm> {
    if (this.instances.has(request.vm)) throw new StateConflictError(`vTPM ${request.vm} is already running on ${this.hostName}`, { vm: request.vm });
    const paths = this.paths(request.vm);
    const stateFile = stateFileName(request.spec);
    await rm(paths.stateDir, { recursive: true, force: true });
    await mkdir(paths.stateDir, { mode: 0o700 });
    await writeFile(join(paths.stateDir, stateFile), request.state, { mode: 0o600 });
    const instance = await launchSwtpm(request.spec, paths, request.stateKey);
    this.track(request.vm, instance, stateFile, request.state);
    return { vm: request.vm, pid: instance.pid, socket: paths.socket };
  }

  async resync(vm: string): Promise<void> {
    const tracked = this.instances.get(vm);
    if (!tracked) throw new StateConflictError(`vTPM ${vm} is not running on ${this.hostName}`, { vm });
    await tracked.watcher.check();
  }

  async stop(vm: string): Promise<void> {
    const tracked = this.instances.get(vm);
    if (!tracked) return;
    await terminateSwtpm(tracked.instance);
    await tracked.exitReported;
  }

  async destroy(vm: string): Promise<void> {
    if (this.instances.has(vm)) throw new StateConflictError(`vTPM ${vm} is running on ${this.hostName}; stop it before destroying its state`, { vm });
    const { stateDir, logFile } = this.paths(vm);
    await rm(stateDir, { recursive: true, force: true });
    await rm(logFile, { force: true });
    await this.removeRuntimeFiles(vm);
  }

  async running(): Promise<RunningVtpm[]> {
    return [...this.instances].map(([vm, { instance }]) => ({ vm, pid: instance.pid, socket: this.socketPath(vm) }));
  }

  onStateChange(listener: (change: StateChange) => Promise<void>): void {
    this.changeListeners.push(listener);
  }

  onExit(listener: (exit: VtpmExit) => void): void {
    this.exitListeners.push(listener);
  }

  async close(): Promise<void> {
    this.exitListeners.length = 0;
    this.changeListeners.length = 0;
    for (const { watcher } of this.instances.values()) watcher.stop();
    this.instances.clear();
  }
}
