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
  ManufacturedVtpm,
  ManufactureRequest,
  RunningVtpm,
  StartRequest,
  StateChange,
  VtpmExit,
} from '../../agent/host-agent.js';
import { devicePathsIn } from '../../agent/host-agent.js';
import { StateConflictError } from '../../errors.js';
import type { StateKind } from '../../store/index.js';

type Call = 'manufacture' | 'adopt' | 'start' | 'stop' | 'destroy' | 'running' | 'resync' | 'workingState';

export class FakeHostAgent implements HostAgent {
  /** What each vTPM's working copy on this host holds, running or not. */
  readonly working = new Map<string, Partial<Record<StateKind, Buffer>>>();
  private readonly runningVtpms = new Map<string, number>();
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
    await this.report({ vm, kind, data, final: false });
  }

  /** swtpm dies (or its QEMU left): the final state is reported, then the exit. */
  async exits(vm: string, code: number | null = 0): Promise<void> {
    if (!this.runningVtpms.delete(vm)) return;
    const copy = this.working.get(vm) ?? {};
    for (const [kind, data] of Object.entries(copy) as Array<[StateKind, Buffer]>) {
      await this.report({ vm, kind, data, final: true });
    }
    for (const listener of this.exitListeners) listener({ vm, code, signal: null });
  }

  private async report(change: StateChange): Promise<void> {
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
    this.runningVtpms.set(request.vm, pid);
    return { vm: request.vm, pid, socket: this.devicePaths(request.vm).socket };
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

  async running(): Promise<RunningVtpm[]> {
    this.enter('running');
    return [...this.runningVtpms].map(([vm, pid]) => ({ vm, pid, socket: this.devicePaths(vm).socket }));
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
      await this.report({ vm, kind, data, final: false });
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
