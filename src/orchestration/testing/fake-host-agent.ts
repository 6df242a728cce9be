/**
 * An in-memory host agent for unit tests of orchestration: it keeps the
 * HostAgent contract (start refuses a running vTPM, stop reports the final
 * state before the exit and resolves once it is gone, destroy refuses while
 * running, working copies outlive a stop) without swtpm or QEMU, and lets a
 * test make any call fail, a guest write state, or a swtpm die.
 */
import type {
  AdoptRequest,
  DevicePaths,
  HostAgent,
  HostDescription,
  IssueRequest,
  ManufacturedVtpm,
  ManufactureRequest,
  RunningVtpm,
  StartRequest,
  StateChange,
  VtpmExit,
} from '../../agent/host-agent.js';
import { devicePathsIn } from '../../agent/host-agent.js';
import { StateConflictError, VtpmError } from '../../errors.js';
import type { StateKind } from '../../store/index.js';
import { digestOf } from '../../vault/state-vault.js';

type Call =
  | 'manufacture'
  | 'issueEkCertificates'
  | 'adopt'
  | 'start'
  | 'stop'
  | 'destroy'
  | 'running'
  | 'resync'
  | 'workingState';

export class FakeHostAgent implements HostAgent {
  /** What each vTPM's working copy on this host holds, running or not. */
  readonly working = new Map<string, Partial<Record<StateKind, Buffer>>>();
  private readonly runningVtpms = new Map<string, { pid: number; instance: string }>();
  /** Per VM and kind, the digest of the state the control plane took last, as a real agent tracks it. */
  private readonly acknowledged = new Map<string, string>();
  /** Every state report sent, in order (for replaying one). */
  readonly reported: StateChange[] = [];
  private readonly failures = new Map<Call, Error>();
  private readonly changeListeners: Array<(change: StateChange) => Promise<void>> = [];
  private readonly exitListeners: Array<(exit: VtpmExit) => void> = [];
  private nextPid = 1000;
  /** Every call made, in order, for tests that check what was (not) asked of the host. */
  readonly calls: string[] = [];

  constructor(
    readonly hostName: string,
    private readonly traits = [
      'COMPUTE_SECURITY_TPM_1_2',
      'COMPUTE_SECURITY_TPM_2_0',
      'COMPUTE_SECURITY_TPM_TIS',
      'COMPUTE_SECURITY_TPM_CRB',
    ],
  ) {}

  /** The next call of `method` fails with `error`. */
  failNext(method: Call, error: Error = new Error(`${method} failed (injected)`)): void {
    this.failures.set(method, error);
  }

  private enter(method: Call, vm = ''): void {
    this.calls.push(`${method} ${vm}`.trim());
    const failure = this.failures.get(method);
    if (failure) {
      this.failures.delete(method);
      throw failure;
    }
  }

  onStateChange(listener: (change: StateChange) => Promise<void>): void {
    this.changeListeners.push(listener);
  }

  onExit(listener: (exit: VtpmExit) => void): void {
    this.exitListeners.push(listener);
  }

  isRunning(vm: string): boolean {
    return this.runningVtpms.has(vm);
  }

  /** The guest changed the TPM's state: the working copy holds it, and it is reported as a swtpm's change would be. */
  async guestWrites(vm: string, data: Buffer, kind: StateKind = 'tpm'): Promise<void> {
    if (!this.runningVtpms.has(vm)) throw new Error(`fake: ${vm} is not running on ${this.hostName}`);
    this.working.set(vm, { ...this.working.get(vm), [kind]: data });
    await this.report(vm, kind, data, false);
  }

  /** The launch of swtpm serving `vm` here. */
  instanceOf(vm: string): string {
    const running = this.runningVtpms.get(vm);
    if (!running) throw new Error(`fake: ${vm} is not running on ${this.hostName}`);
    return running.instance;
  }

  /** swtpm dies (or its QEMU left): the final state is reported, then the exit. */
  async exits(vm: string, code: number | null = 0): Promise<void> {
    const running = this.runningVtpms.get(vm);
    if (!running) return;
    const copy = this.working.get(vm) ?? {};
    for (const [kind, data] of Object.entries(copy) as Array<[StateKind, Buffer]>) {
      // A refused report (4xx: this swtpm no longer serves the vTPM) is dropped, as a real agent drops it.
      await this.report(vm, kind, data, true).catch((error: unknown) => {
        if (!(error instanceof VtpmError && error.status < 500)) throw error;
      });
    }
    this.runningVtpms.delete(vm);
    for (const listener of this.exitListeners) listener({ vm, code, signal: null, instance: running.instance });
  }

  private async report(vm: string, kind: StateKind, data: Buffer, final: boolean): Promise<void> {
    const key = `${vm}/${kind}`;
    const acknowledged = this.acknowledged.get(key);
    const digest = digestOf(data);
    if (digest === acknowledged) return;
    // No control plane listening: like a real agent, the change stays unreported until the next try.
    if (this.changeListeners.length === 0) return;
    const change = { vm, kind, data, final, instance: this.instanceOf(vm), after: acknowledged ? [acknowledged] : [] };
    await this.send(change);
    this.acknowledged.set(key, digest);
  }

  /** Sends a report as it is (a replay, for one). */
  async send(change: StateChange): Promise<void> {
    this.reported.push(change);
    await Promise.all(this.changeListeners.map((listener) => listener(change)));
  }

  async describe(): Promise<HostDescription> {
    const capabilities = {
      swtpm: { version: 'fake', features: [] },
      swtpmSetup: { features: [] },
      qemu: { binary: 'fake', version: 'fake', tpmModels: ['tpm-tis' as const, 'tpm-crb' as const] },
    };
    return {
      name: this.hostName,
      traits: this.traits,
      capabilities,
      layout: { runDir: '/fake/run', nvramDir: '/fake/nvram' },
    };
  }

  async manufacture(request: ManufactureRequest): Promise<ManufacturedVtpm> {
    this.enter('manufacture', request.vm);
    if (this.runningVtpms.has(request.vm)) throw new StateConflictError(`${request.vm} is running`);
    const certificate = { keyType: 'rsa2048', der: Buffer.from(`ek-of-${request.vm}`) };
    return { state: Buffer.from(`manufactured ${request.spec.version} ${request.vm}`), ekCertificates: [certificate] };
  }

  async issueEkCertificates(request: IssueRequest): Promise<ManufacturedVtpm> {
    this.enter('issueEkCertificates', request.vm);
    const certificate = { keyType: 'rsa2048', der: Buffer.from(`ek-of-${request.vm}`) };
    return {
      state: Buffer.concat([request.tpm.state, Buffer.from(` certified for ${request.vm}`)]),
      ekCertificates: [certificate],
    };
  }

  async adopt(request: AdoptRequest): Promise<ManufacturedVtpm> {
    this.enter('adopt', request.vm);
    return { state: Buffer.from(request.state), ekCertificates: [] };
  }

  async start(request: StartRequest): Promise<RunningVtpm> {
    this.enter('start', request.vm);
    if (this.runningVtpms.has(request.vm)) {
      throw new StateConflictError(`vTPM ${request.vm} is already running on ${this.hostName}`, { vm: request.vm });
    }
    // Exactly the given state, whatever the working copy held before.
    const copy: Partial<Record<StateKind, Buffer>> = { tpm: Buffer.from(request.state) };
    if (request.nvram) copy.nvram = Buffer.from(request.nvram);
    this.working.set(request.vm, copy);
    const pid = this.nextPid++;
    this.runningVtpms.set(request.vm, { pid, instance: request.instance });
    this.acknowledged.set(`${request.vm}/tpm`, digestOf(request.state));
    if (request.nvram) this.acknowledged.set(`${request.vm}/nvram`, digestOf(request.nvram));
    else this.acknowledged.delete(`${request.vm}/nvram`);
    return { vm: request.vm, pid, socket: this.devicePaths(request.vm).socket, instance: request.instance };
  }

  /** A state the test damaged on purpose starts with "damaged". */
  async stateLoads(request: { state: Buffer }): Promise<boolean> {
    return !request.state.toString().startsWith('damaged');
  }

  async defaultVariableStore(secureBoot: boolean): Promise<Buffer> {
    return Buffer.from(`variables secure-boot=${secureBoot}`);
  }

  async stop(vm: string): Promise<void> {
    this.enter('stop', vm);
    await this.exits(vm);
  }

  async destroy(vm: string): Promise<void> {
    this.enter('destroy', vm);
    if (this.runningVtpms.has(vm)) throw new StateConflictError(`vTPM ${vm} is running on ${this.hostName}`, { vm });
    this.working.delete(vm);
  }

  /** The host is lost to the control plane (a test says so): its heartbeats stop, its swtpms run on. */
  lost = false;

  /** VMs whose guest is connected to their vTPM here (a test says so). */
  readonly connected = new Set<string>();

  async guestConnected(vm: string): Promise<boolean> {
    return this.runningVtpms.has(vm) && this.connected.has(vm);
  }

  async running(): Promise<RunningVtpm[]> {
    this.enter('running');
    return [...this.runningVtpms].map(([vm, { pid, instance }]) => ({
      vm,
      pid,
      socket: this.devicePaths(vm).socket,
      instance,
    }));
  }

  devicePaths(vm: string): DevicePaths {
    return devicePathsIn({ runDir: '/fake/run', nvramDir: '/fake/nvram' }, vm);
  }

  async resync(vm: string): Promise<void> {
    this.enter('resync', vm);
    if (!this.runningVtpms.has(vm))
      throw new StateConflictError(`vTPM ${vm} is not running on ${this.hostName}`, { vm });
    const copy = this.working.get(vm) ?? {};
    for (const [kind, data] of Object.entries(copy) as Array<[StateKind, Buffer]>) {
      await this.report(vm, kind, data, false);
    }
  }

  async workingState(vm: string): Promise<Partial<Record<StateKind, Buffer>>> {
    this.enter('workingState', vm);
    if (this.runningVtpms.has(vm)) throw new StateConflictError(`vTPM ${vm} is running on ${this.hostName}`, { vm });
    return { ...this.working.get(vm) };
  }

  async close(): Promise<void> {
    this.changeListeners.length = 0;
    this.exitListeners.length = 0;
  }
}
