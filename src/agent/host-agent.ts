/**
 * The host agent is the part that runs swtpm on a host. The control plane
 * talks to it only through this interface: in process on a single machine
 * (LocalHostAgent), and over authenticated HTTP for remote hosts, with the
 * same methods, so that nothing in the control plane knows which it has.
 * What a host reports (state changes, exits) goes the other way, to the
 * control plane's state ingest (src/orchestration/state-ingest.ts).
 *
 * State keys cross this interface because swtpm needs them; an agent keeps
 * them in memory only, for as long as the call (or the swtpm process) needs.
 */
import type { HostCapabilities } from '../swtpm/capabilities.js';
import type { EkCertificate } from '../swtpm/manufacture.js';
import type { Firmware } from '../tpm-spec/firmware.js';
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';
import type { StateKind } from '../store/index.js';

export interface HostDescription {
  name: string;
  traits: string[];
  capabilities: HostCapabilities;
  layout: HostLayout;
  /** How many vTPMs the host may hold (`--max-vtpms`); undefined: no limit. */
  maxVtpms?: number | undefined;
}

/** Where a host keeps vTPM sockets and UEFI variable stores. */
export interface HostLayout {
  runDir: string;
  nvramDir: string;
}

/** The same rule on every host, so that the control plane knows a vTPM's paths without asking. */
export function devicePathsIn(layout: HostLayout, vm: string): DevicePaths {
  return { socket: `${layout.runDir}/${vm}.sock`, nvram: `${layout.nvramDir}/${vm}.fd` };
}

export interface VtpmOnHost {
  vm: string;
  spec: TpmSpec;
  stateKey: Buffer;
}

export interface ManufactureRequest extends VtpmOnHost {
  /** Ahead of demand: at the lowest CPU priority. */
  background?: boolean;
}

/** The TPM's persistent state as swtpm keeps it: one file, encrypted by swtpm under the state key. */
export interface ManufacturedVtpm {
  ekCertificates: EkCertificate[];
  state: Buffer;
}

/** A manufactured TPM given to the VM `vm`: its certificates are issued anew for it. */
export interface IssueRequest extends VtpmOnHost {
  tpm: ManufacturedVtpm;
}

/** A TPM state another manager created (libvirt's swtpm), to be taken over under the vTPM's own key. */
export interface AdoptRequest extends VtpmOnHost {
  state: Buffer;
  /** The passphrase the other manager encrypted the state with, if it did. */
  sourcePassphrase?: Buffer | undefined;
}

export interface StateChange {
  vm: string;
  kind: StateKind;
  data: Buffer;
  /** The state left when swtpm exited. */
  final: boolean;
  /** The swtpm launch that reported it (RunningVtpm.instance). */
  instance: string;
  /**
   * Digests of the states this one follows: the last one the control plane
   * took, and any sent since whose answer was lost. Empty when the agent does
   * not know (it took over a running swtpm after a restart). A report that
   * follows none of what the vault holds is stale (replayed, or from before
   * a restore) and is refused.
   */
  after: string[];
}

export interface StartRequest extends VtpmOnHost {
  /** The id of this launch, chosen by the control plane before it asks: the vTPM's row names it first. */
  instance: string;
  state: Buffer;
  firmware: Firmware;
  /** The UEFI variable store, for UEFI guests. */
  nvram?: Buffer | undefined;
}

/** Where QEMU finds a vTPM's socket and variable store on a host, whether or not it runs now. */
export interface DevicePaths {
  socket: string;
  nvram: string;
}

export interface RunningVtpm {
  vm: string;
  pid: number;
  socket: string;
  /** This launch of swtpm for the vTPM, unique across launches and hosts; it survives a restart of the agent. */
  instance: string;
}

export interface VtpmExit {
  vm: string;
  code: number | null;
  signal: string | null;
  instance: string;
}

export interface HostAgent {
  readonly hostName: string;
  describe(): Promise<HostDescription>;
  /** Manufactures the vTPM: returns its state and its EK certificates. */
  manufacture(request: ManufactureRequest): Promise<ManufacturedVtpm>;
  /**
   * The TPM with its EK and platform certificates issued for `vm` by the deployment's CA, in its NV memory and
   * returned (a pooled TPM's were issued for its pool entry); the state stays under the same key.
   */
  issueEkCertificates(request: IssueRequest): Promise<ManufacturedVtpm>;
  /**
   * Re-encrypts another manager's TPM state under the vTPM's
   * key, unchanged for the guest, and reads its EK certificates.
   */
  adopt(request: AdoptRequest): Promise<ManufacturedVtpm>;
  /**
   * Starts swtpm on exactly the given state (whatever the host's disk held
   * before is replaced); resolves when the socket accepts connections.
   */
  start(request: StartRequest): Promise<RunningVtpm>;
  /** A fresh UEFI variable store from the host's firmware templates. */
  defaultVariableStore(secureBoot: boolean): Promise<Buffer>;
  /** Stops swtpm; resolves when it is gone. Stopping a vTPM that is not running is not an error. */
  stop(vm: string): Promise<void>;
  /** Removes the vTPM's state from this host. Refuses while it runs. */
  destroy(vm: string): Promise<void>;
  running(): Promise<RunningVtpm[]>;
  /** Whether a guest (its QEMU) is connected to the vTPM's socket on this host now. */
  guestConnected(vm: string): Promise<boolean>;
  devicePaths(vm: string): DevicePaths;
  /** Reports a running vTPM's current state as a change (after a restart of the control plane). */
  resync(vm: string): Promise<void>;
  /**
   * What this host's working copy of a stopped vTPM holds: the state its swtpm
   * (and QEMU) left, which may be newer than the vault when the control plane
   * was down as the guest exited.
   */
  workingState(vm: string, spec: TpmSpec): Promise<Partial<Record<StateKind, Buffer>>>;
  /** Whether `state` is a complete TPM state that swtpm loads under `stateKey` (a host that manufactures checks). */
  stateLoads(request: VtpmOnHost & { state: Buffer }): Promise<boolean>;
  /** Lets go of the host; running swtpm processes keep running. */
  close(): Promise<void>;
}
