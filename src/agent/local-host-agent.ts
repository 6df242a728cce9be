/**
 * The agent for the machine the service runs on. Layout under the data
 * directory, all working copies (the vault holds the truth; start rewrites them):
 *   tpm/<vm>/          the running vTPM's state, encrypted by swtpm     } its working copy
 *   nvram/<vm>.fd      a UEFI guest's variable store, which QEMU writes } (working-copy.ts)
 *   log/<vm>.log       swtpm's own log
 * and under the run directory: <vm>.sock and the launch's files (launch-files.ts)
 */
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import { StateConflictError, UnreachableError } from '../errors.js';
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';
import type { StateKind } from '../store/index.js';
import { probeCapabilities, traitsOf } from '../swtpm/capabilities.js';
import type { CertificateAuthority } from '../swtpm/certificate-authority.js';
import {
  adoptSwtpm,
  hostConfinement,
  launchSwtpm,
  terminateSwtpm,
  type Confinement,
  type InstancePaths,
  type SwtpmInstance,
} from '../swtpm/instance.js';
import { stateFileName } from '../swtpm/state-file.js';
import {
  devicePathsIn,
  type AdoptRequest,
  type DevicePaths,
  type HostAgent,
  type HostDescription,
  type IssueRequest,
  type ManufactureRequest,
  type ManufacturedVtpm,
  type RunningVtpm,
  type StartRequest,
  type StateChange,
  type VtpmExit,
  type VtpmOnHost,
} from './host-agent.js';
import { hasConnectedPeer } from './socket-peers.js';
import { prepareHostDirectories, type SystemGroup, type SystemUser } from './host-directories.js';
import { LaunchFiles, type Lineages } from './launch-files.js';
import type { StateWatcher } from './state-watcher.js';
import { LaunchReports } from './launch-reports.js';
import { Manufacturing } from './manufacturing.js';
import { prepareWorkingCopy, readWorkingCopy, removeFile, removeWorkingCopy, shareWithQemu } from './working-copy.js';

export interface LocalHostAgentOptions {
  dataDir: string;
  runDir: string;
  /** A memory-backed directory for short-lived secret-bearing configuration. */
  scratchDir: string;
  /**
   * The deployment's EK CA, for manufacturing; a remote agent (`vtpm agent`)
   * runs TPMs the control plane manufactured and has none.
   */
  authority?: CertificateAuthority | undefined;
  logger: Logger;
  hostName?: string;
  /** The unprivileged user running swtpm processes run as, when the service runs as root. */
  swtpmUser?: SystemUser | undefined;
  /**
   * The group QEMU runs in when it is not root (libvirt's libvirt-qemu): vTPM
   * sockets and UEFI variable stores are shared with it (0660), and the
   * directories holding them let it pass (0710).
   */
  qemuGroup?: SystemGroup | undefined;
  /** Hears how long each state change took from being noticed to being taken (the sync lag metric). */
  syncTaken?: ((lagMs: number) => void) | undefined;
  /** How many vTPMs the host may hold (`--max-vtpms`); undefined: no limit. */
  maxVtpms?: number | undefined;
}

/** How long a stop waits for swtpm's final state to reach the vault before it answers that it is still trying. */
const FINAL_REPORT_WAIT_MS = 30_000;

/** The one file in which swtpm keeps a TPM's persistent state. */
interface Tracked {
  instance: SwtpmInstance;
  /** Which launch of swtpm this is (RunningVtpm.instance). */
  id: string;
  watchers: StateWatcher[];
  /** Resolves once the final state and the exit have been reported. */
  exitReported: Promise<void>;
}

export class LocalHostAgent implements HostAgent {
  readonly hostName: string;
  private readonly instances = new Map<string, Tracked>();
  /** Launches that exited while no agent watched them, whose last state and exit are being reported. */
  private readonly departed = new Map<string, StateWatcher[]>();
  private readonly launches: LaunchFiles;
  private readonly reports: LaunchReports;
  private readonly manufacturing: Manufacturing;

  private constructor(
    private readonly options: LocalHostAgentOptions,
    private readonly confinement: Confinement,
    private readonly description: HostDescription,
  ) {
    this.hostName = description.name;
    this.launches = new LaunchFiles(options.runDir);
    this.reports = new LaunchReports(this.hostName, options.logger, options.syncTaken);
    this.manufacturing = new Manufacturing({ ...options, hostName: this.hostName });
  }

  static async open(options: LocalHostAgentOptions): Promise<LocalHostAgent> {
    await prepareHostDirectories(options);
    const capabilities = await probeCapabilities();
    const confinement = hostConfinement(options.swtpmUser, capabilities);
    if (!confinement.seccomp)
      options.logger.warn('this swtpm has no seccomp support: vTPMs run without a syscall filter');
    const agent = new LocalHostAgent(options, confinement, {
      name: options.hostName ?? hostname(),
      traits: traitsOf(capabilities),
      capabilities,
      layout: { runDir: resolve(options.runDir), nvramDir: resolve(options.dataDir, 'nvram') },
      maxVtpms: options.maxVtpms,
    });
    await agent.adoptSurvivors();
    return agent;
  }

  private paths(vm: string): InstancePaths {
    return {
      stateDir: join(this.options.dataDir, 'tpm', vm),
      socket: this.devicePaths(vm).socket,
      pidFile: this.launches.pidFile(vm),
      logFile: join(this.options.dataDir, 'log', `${vm}.log`),
    };
  }

  private workingCopy(vm: string, spec: TpmSpec) {
    return { stateDir: this.paths(vm).stateDir, stateFile: stateFileName(spec), nvram: this.devicePaths(vm).nvram };
  }

  devicePaths(vm: string): DevicePaths {
    return devicePathsIn(this.description.layout, vm);
  }

  /** swtpm processes outlive a restart of the service; take back those still serving their socket. */
  private async adoptSurvivors(): Promise<void> {
    for (const vm of await this.launches.vms()) {
      const instance = await adoptSwtpm(this.paths(vm));
      const states = await readdir(this.paths(vm).stateDir).catch(() => []);
      const stateFile = states.find((f) => f.endsWith('.permall'));
      const recorded = await this.launches.instance(vm);
      const withNvram = existsSync(this.devicePaths(vm).nvram);
      const lineage = await this.launches.recordedLineages(vm);
      if (instance && stateFile) {
        // A swtpm started before launches had ids gets one now; the control plane learns it from running().
        const id = recorded || this.launches.recordInstance(vm);
        this.options.logger.info({ vm, pid: instance.pid, instance: id }, 'adopted running swtpm');
        this.track(vm, instance, id, stateFile, withNvram, lineage);
      } else if (stateFile && recorded) {
        // Its last state is only in the working copy, and nobody told the control plane it stopped.
        this.options.logger.info({ vm, instance: recorded }, 'swtpm exited while no agent watched it');
        const watchers = this.watch(vm, recorded, stateFile, withNvram, lineage);
        this.departed.set(vm, watchers);
        void this.reportExit(vm, recorded, watchers, { code: null, signal: null }, () => this.departed.delete(vm));
      } else {
        await this.removeRuntimeFiles(vm);
      }
    }
  }

  private watch(
    vm: string,
    id: string,
    stateFile: string,
    withNvram: boolean,
    lineage: Lineages,
    initial: { tpm?: Buffer; nvram?: Buffer } = {},
  ): StateWatcher[] {
    return this.reports.watch({
      vm,
      instance: id,
      stateDir: this.paths(vm).stateDir,
      stateFile,
      nvram: withNvram ? this.devicePaths(vm).nvram : undefined,
      initial,
      lineage,
    });
  }

  private track(
    vm: string,
    instance: SwtpmInstance,
    id: string,
    stateFile: string,
    withNvram: boolean,
    lineage: Lineages,
    initial: { tpm?: Buffer; nvram?: Buffer } = {},
  ): void {
    const watchers = this.watch(vm, id, stateFile, withNvram, lineage, initial);
    const exitReported = instance.exited.then((exit) =>
      this.instances.get(vm) === tracked
        ? this.reportExit(vm, id, watchers, exit, () => this.instances.delete(vm))
        : undefined,
    );
    const tracked: Tracked = { instance, id, watchers, exitReported };
    this.instances.set(vm, tracked);
    for (const watcher of watchers) watcher.start();
  }

  /** `forget` lets go of the launch; its runtime files go with it. */
  private reportExit(
    vm: string,
    id: string,
    watchers: StateWatcher[],
    exit: Awaited<SwtpmInstance['exited']>,
    forget: () => void,
  ): Promise<void> {
    return this.reports.reportExit(vm, id, watchers, exit, async () => {
      forget();
      await this.removeRuntimeFiles(vm);
    });
  }

  private async removeRuntimeFiles(vm: string): Promise<void> {
    await removeFile(this.paths(vm).socket);
    await this.launches.remove(vm);
  }

  async describe(): Promise<HostDescription> {
    return this.description;
  }

  async manufacture(request: ManufactureRequest): Promise<ManufacturedVtpm> {
    if (this.instances.has(request.vm))
      throw new StateConflictError(
        `vTPM ${request.vm} is running on ${this.hostName}; it cannot be manufactured again`,
      );
    return this.manufacturing.manufacture(request, this.paths(request.vm).stateDir);
  }

  issueEkCertificates(request: IssueRequest): Promise<ManufacturedVtpm> {
    return this.manufacturing.issueEkCertificates(request);
  }

  defaultVariableStore(secureBoot: boolean): Promise<Buffer> {
    return this.manufacturing.defaultVariableStore(secureBoot);
  }

  async start(request: StartRequest): Promise<RunningVtpm> {
    if (this.instances.has(request.vm))
      throw new StateConflictError(`vTPM ${request.vm} is already running on ${this.hostName}`, { vm: request.vm });
    if (this.departed.has(request.vm))
      throw new StateConflictError(`the last state of vTPM ${request.vm} on ${this.hostName} is still being reported`, {
        vm: request.vm,
      });
    const paths = this.paths(request.vm);
    const stateFile = stateFileName(request.spec);
    prepareWorkingCopy(this.workingCopy(request.vm, request.spec), this.options, request.state, request.nvram);
    const id = this.launches.recordInstance(request.vm, request.instance);
    const instance = await launchSwtpm(request.spec, paths, request.stateKey, this.confinement);
    try {
      // Before QEMU is told where the socket is: swtpm made it for its own user only.
      shareWithQemu(paths.socket, this.options.qemuGroup);
    } catch (error) {
      process.kill(instance.pid, 'SIGTERM');
      throw error;
    }
    const lineage = this.launches.freshLineages(request.vm);
    this.track(request.vm, instance, id, stateFile, request.nvram !== undefined, lineage, {
      tpm: request.state,
      ...(request.nvram && { nvram: request.nvram }),
    });
    return { vm: request.vm, pid: instance.pid, socket: paths.socket, instance: id };
  }

  async adopt(request: AdoptRequest): Promise<ManufacturedVtpm> {
    if (this.instances.has(request.vm))
      throw new StateConflictError(`vTPM ${request.vm} is running on ${this.hostName}; it cannot be adopted again`, {
        vm: request.vm,
      });
    return this.manufacturing.adopt(request);
  }

  async resync(vm: string): Promise<void> {
    const tracked = this.instances.get(vm);
    if (!tracked) throw new StateConflictError(`vTPM ${vm} is not running on ${this.hostName}`, { vm });
    for (const watcher of tracked.watchers) await watcher.check();
  }

  stateLoads(request: VtpmOnHost & { state: Buffer }): Promise<boolean> {
    return this.manufacturing.stateLoads(request);
  }

  async workingState(vm: string, spec: TpmSpec): Promise<Partial<Record<StateKind, Buffer>>> {
    if (this.instances.has(vm))
      throw new StateConflictError(`vTPM ${vm} is running on ${this.hostName}; its state is reported as it changes`, {
        vm,
      });
    return readWorkingCopy(this.workingCopy(vm, spec));
  }

  async stop(vm: string): Promise<void> {
    const tracked = this.instances.get(vm);
    if (!tracked) return;
    await terminateSwtpm(tracked.instance);
    const waiting = new AbortController();
    const taken = await Promise.race([
      tracked.exitReported.then(() => true),
      delay(FINAL_REPORT_WAIT_MS, false, { signal: waiting.signal }).catch(() => true),
    ]);
    waiting.abort();
    if (!taken) {
      throw new UnreachableError(
        `swtpm of VM ${vm} stopped, but its final state has not reached the vault yet: ` +
          `${this.hostName} keeps it and keeps trying; the vTPM counts as stopped once it is in the vault`,
        { vm, host: this.hostName },
      );
    }
  }

  async destroy(vm: string): Promise<void> {
    if (this.instances.has(vm))
      throw new StateConflictError(`vTPM ${vm} is running on ${this.hostName}; stop it before destroying its state`, {
        vm,
      });
    const { stateDir, logFile } = this.paths(vm);
    await removeWorkingCopy({ stateDir, nvram: this.devicePaths(vm).nvram });
    // With the one older file its rotation keeps: nothing of an erased vTPM stays behind.
    for (const file of [logFile, `${logFile}.1`]) await removeFile(file);
    await this.removeRuntimeFiles(vm);
  }

  async guestConnected(vm: string): Promise<boolean> {
    return this.instances.has(vm) && hasConnectedPeer(this.devicePaths(vm).socket);
  }

  async running(): Promise<RunningVtpm[]> {
    return [...this.instances].map(([vm, { instance, id }]) => ({
      vm,
      pid: instance.pid,
      socket: this.devicePaths(vm).socket,
      instance: id,
    }));
  }

  /**
   * Called for every change of a running vTPM's state, in order per VM; the
   * agent waits for the returned promise before reporting the next change,
   * and reports the final state before the exit.
   */
  onStateChange(listener: (change: StateChange) => Promise<void>): void {
    this.reports.onStateChange(listener);
  }

  /** Called once for every swtpm that exits, for whatever reason, after its final state was reported. */
  onExit(listener: (exit: VtpmExit) => void): void {
    this.reports.onExit(listener);
  }

  async close(): Promise<void> {
    this.reports.close();
    for (const { watchers } of this.instances.values()) for (const watcher of watchers) watcher.abandonReports();
    for (const watchers of this.departed.values()) for (const watcher of watchers) watcher.abandonReports();
    this.instances.clear();
    this.departed.clear();
  }
}
