/**
 * The agent for the machine the service runs on. Layout under the data
 * directory:
 *   tpm/<vm>/          the vTPM's state, encrypted by swtpm (0700, files 0600)
 *   log/<vm>.log       swtpm's own log
 * and under the run directory:
 *   <vm>.sock, <vm>.pid
 */
import { mkdir, readdir, rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { EmulatorError, StateConflictError } from '../errors.js';
import { probeCapabilities, traitsOf } from '../swtpm/capabilities.js';
import type { CertificateAuthority } from '../swtpm/certificate-authority.js';
import { adoptSwtpm, launchSwtpm, terminateSwtpm, type InstancePaths, type SwtpmInstance } from '../swtpm/instance.js';
import { manufactureTpm, type EkCertificate } from '../swtpm/manufacture.js';
import type { HostAgent, HostDescription, RunningVtpm, VtpmExit, VtpmOnHost } from './host-agent.js';

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

export class LocalHostAgent implements HostAgent {
  readonly hostName: string;
  private readonly instances = new Map<string, SwtpmInstance>();
  private readonly exitListeners: Array<(exit: VtpmExit) => void> = [];
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
      if (instance) {
        this.options.logger.info({ vm, pid: instance.pid }, 'adopted running swtpm');
        this.track(vm, instance);
      } else {
        await this.removeRuntimeFiles(vm);
      }
    }
  }

  private track(vm: string, instance: SwtpmInstance): void {
    this.instances.set(vm, instance);
    void instance.exited.then(async ({ code, signal }) => {
      if (this.instances.get(vm) !== instance) return;
      this.instances.delete(vm);
      await this.removeRuntimeFiles(vm);
      const level = code === 0 || code === null ? 'info' : 'warn';
      this.options.logger[level]({ vm, code, signal }, 'swtpm exited');
      for (const listener of this.exitListeners) listener({ vm, code, signal });
    });
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

  async manufacture(request: VtpmOnHost): Promise<EkCertificate[]> {
    if (this.instances.has(request.vm)) throw new StateConflictError(`vTPM ${request.vm} is running on ${this.hostName}; it cannot be manufactured again`);
    const { stateDir } = this.paths(request.vm);
    await rm(stateDir, { recursive: true, force: true });
    try {
      return await manufactureTpm({
        vm: request.vm,
        spec: request.spec,
        stateDir,
        stateKey: request.stateKey,
        authority: this.options.authority,
        scratchRoot: this.options.scratchDir,
      });
    } catch (error) {
      await rm(stateDir, { recursive: true, force: true });
      throw error;
    }
  }

  async start(request: VtpmOnHost): Promise<RunningVtpm> {
    if (this.instances.has(request.vm)) throw new StateConflictError(`vTPM ${request.vm} is already running on ${this.hostName}`, { vm: request.vm });
    const paths = this.paths(request.vm);
    const stateFiles = await readdir(paths.stateDir).catch(() => []);
    if (!stateFiles.some((file) => file.endsWith('.permall'))) {
      throw new EmulatorError(`the state of vTPM ${request.vm} is missing from ${paths.stateDir} on ${this.hostName}`, { vm: request.vm, host: this.hostName });
    }
    const instance = await launchSwtpm(request.spec, paths, request.stateKey);
    this.track(request.vm, instance);
    return { vm: request.vm, pid: instance.pid, socket: paths.socket };
  }

  async stop(vm: string): Promise<void> {
    const instance = this.instances.get(vm);
    if (instance) await terminateSwtpm(instance);
  }

  async destroy(vm: string): Promise<void> {
    if (this.instances.has(vm)) throw new StateConflictError(`vTPM ${vm} is running on ${this.hostName}; stop it before destroying its state`, { vm });
    const { stateDir, logFile } = this.paths(vm);
    await rm(stateDir, { recursive: true, force: true });
    await rm(logFile, { force: true });
    await this.removeRuntimeFiles(vm);
  }

  async running(): Promise<RunningVtpm[]> {
    return [...this.instances].map(([vm, instance]) => ({ vm, pid: instance.pid, socket: this.socketPath(vm) }));
  }

  onExit(listener: (exit: VtpmExit) => void): void {
    this.exitListeners.push(listener);
  }

  async close(): Promise<void> {
    this.exitListeners.length = 0;
    this.instances.clear();
  }
}
