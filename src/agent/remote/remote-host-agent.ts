/**
 * A host agent in another process, normally on another machine (`vtpm
 * agent`), behind the same HostAgent interface as the in-process one. Calls
 * go to the agent's API with the host's agent token (over HTTPS off
 * loopback: state keys travel in them); the agent's reports come back through
 * the control plane's agent routes, straight to the state ingest.
 *
 * Remote hosts run vTPMs; manufacturing and adoption happen on the control
 * plane's own host, where the deployment's EK CA is.
 */
import type { ApiClient } from '../../api/client.js';
import { HostSetupError, UnreachableError } from '../../errors.js';
import type { TpmSpec } from '../../tpm-spec/tpm-spec.js';
import type { StateKind } from '../../store/index.js';
import {
  devicePathsIn,
  type DevicePaths,
  type HostAgent,
  type HostDescription,
  type HostLayout,
  type ManufacturedVtpm,
  type RunningVtpm,
  type StartRequest,
} from '../host-agent.js';
import { AGENT_API, type StartBody } from './wire.js';

export class RemoteHostAgent implements HostAgent {
  private layout: HostLayout | undefined;

  constructor(
    readonly hostName: string,
    private readonly client: ApiClient,
  ) {}

  /** What the agent said of itself when it reported in. */
  learn(description: HostDescription): void {
    this.layout = description.layout;
  }

  async describe(): Promise<HostDescription> {
    const description = await this.client.request<HostDescription>('GET', `${AGENT_API}/describe`);
    this.learn(description);
    return description;
  }

  private runsOnly(): never {
    throw new HostSetupError(
      `host ${this.hostName} runs vTPMs but does not manufacture or adopt them: the control plane's host does`,
    );
  }

  async manufacture(): Promise<ManufacturedVtpm> {
    this.runsOnly();
  }

  async adopt(): Promise<ManufacturedVtpm> {
    this.runsOnly();
  }

  async issueEkCertificates(): Promise<ManufacturedVtpm> {
    this.runsOnly();
  }

  async defaultVariableStore(): Promise<Buffer> {
    this.runsOnly();
  }

  async stateLoads(): Promise<boolean> {
    this.runsOnly();
  }

  start(request: StartRequest): Promise<RunningVtpm> {
    const body: StartBody = {
      instance: request.instance,
      spec: request.spec,
      firmware: request.firmware,
      state_key: request.stateKey.toString('base64'),
      state: request.state.toString('base64'),
      ...(request.nvram && { nvram: request.nvram.toString('base64') }),
    };
    return this.client.request<RunningVtpm>('POST', `${AGENT_API}/vtpms/${request.vm}/start`, body);
  }

  async stop(vm: string): Promise<void> {
    await this.client.request('POST', `${AGENT_API}/vtpms/${vm}/stop`);
  }

  async destroy(vm: string): Promise<void> {
    await this.client.request('DELETE', `${AGENT_API}/vtpms/${vm}`);
  }

  async guestConnected(vm: string): Promise<boolean> {
    return (await this.client.request<{ connected: boolean }>('GET', `${AGENT_API}/vtpms/${vm}/connected`)).connected;
  }

  async running(): Promise<RunningVtpm[]> {
    return (await this.client.request<{ running: RunningVtpm[] }>('GET', `${AGENT_API}/running`)).running;
  }

  devicePaths(vm: string): DevicePaths {
    if (!this.layout)
      throw new UnreachableError(`host ${this.hostName}'s agent has not reported in yet: start \`vtpm agent\` there`, {
        host: this.hostName,
      });
    return devicePathsIn(this.layout, vm);
  }

  async resync(vm: string): Promise<void> {
    await this.client.request('POST', `${AGENT_API}/vtpms/${vm}/resync`);
  }

  async workingState(vm: string, spec: TpmSpec): Promise<Partial<Record<StateKind, Buffer>>> {
    const state = await this.client.request<Partial<Record<StateKind, string>>>(
      'POST',
      `${AGENT_API}/vtpms/${vm}/working-state`,
      { spec },
    );
    return Object.fromEntries(Object.entries(state).map(([kind, data]) => [kind, Buffer.from(data, 'base64')]));
  }

  async close(): Promise<void> {}
}
