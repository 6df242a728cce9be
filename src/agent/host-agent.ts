/**
 * The host agent is the part that runs swtpm on a host. The control plane
 * talks to it only through this interface: in process on a single machine
 * (LocalHostAgent), and over authenticated HTTP for remote hosts, with the
 * same methods, so that nothing in the control plane knows which it has.
 *
 * State keys cross this interface because swtpm needs them; an agent keeps
 * them in memory only, for as long as the call (or the swtpm process) needs.
 */
import type { HostCapabilities } from '../swtpm/capabilities.js';
import type { EkCertificate } from '../swtpm/manufacture.js';
import type { TpmSpec } from '../spec/tpm-spec.js';

export interface HostDescription {
  name: string;
  traits: string[];
  capabilities: HostCapabilities;
}

export interface VtpmOnHost {
  vm: string;
  spec: TpmSpec;
  stateKey: Buffer;
}

export interface RunningVtpm {
  vm: string;
  pid: number;
  socket: string;
}

export interface VtpmExit {
  vm: string;
  code: number | null;
  signal: string | null;
}

export interface HostAgent {
  readonly hostName: string;
  describe(): Promise<HostDescription>;
  /** Creates the vTPM's state on this host; returns its EK certificates. Replaces any leftover state. */
  manufacture(request: VtpmOnHost): Promise<EkCertificate[]>;
  /** Starts swtpm on the vTPM's state; resolves when the socket accepts connections. */
  start(request: VtpmOnHost): Promise<RunningVtpm>;
  /** Stops swtpm; resolves when it is gone. Stopping a vTPM that is not running is not an error. */
  stop(vm: string): Promise<void>;
  /** Removes the vTPM's state from this host. Refuses while it runs. */
  destroy(vm: string): Promise<void>;
  running(): Promise<RunningVtpm[]>;
  /** Where QEMU will find the vTPM's socket on this host, whether or not it runs now. */
  socketPath(vm: string): string;
  /** Called once for every swtpm that exits, for whatever reason. */
  onExit(listener: (exit: VtpmExit) => void): void;
  /** Lets go of the host; running swtpm processes keep running. */
  close(): Promise<void>;
}
