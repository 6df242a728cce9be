/**
 * The fleet: the hosts that run vTPMs and the agent of each, in process (the
 * control plane's own host, which also manufactures and adopts, since the
 * deployment's EK CA is there) or remote (`vtpm agent`). Nothing else
 * constructs an agent or knows which kind a host has.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Logger } from 'pino';
import type { HostAgent, HostDescription } from '../agent/host-agent.js';
import { RemoteHostAgent } from '../agent/remote/remote-host-agent.js';
import { ApiClient } from '../api/client.js';
import { requestContext } from '../audit/audit-log.js';
import type { HostView, RegisteredHost } from '../api/hosts.js';
import { requireSecureUrl } from '../api/secure-url.js';
import { NoValidHostError, StateConflictError, UnauthenticatedError } from '../errors.js';
import type { KeyManager } from '../keys/key-manager.js';
import { withSecret, withWiped } from '../keys/wiped.js';
import { DEPLOYMENT_PROJECT, type Store } from '../store/index.js';
import type { HostRecord } from '../store/schema.js';
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';
import { chooseHost } from './scheduler.js';

const agentToken = (secret: Buffer) => secret.toString('base64url');
const CONNECT_RETRY_FIRST_MS = 500;
const CONNECT_RETRY_LONGEST_MS = 5_000;
const HOST_DOWN_AFTER_MS = 15_000;
const digest = (token: string) => createHash('sha256').update(token).digest();

interface RemoteHost {
  agent: RemoteHostAgent;
  tokenDigest: Buffer;
}

export interface FleetOptions {
  store: Store;
  keys: KeyManager;
  logger: Logger;
  /** The control plane's own host: it runs vTPMs and manufactures and adopts every one. */
  manufacturer: HostAgent;
  /** Further hosts whose agents run in this process (tests' fakes): they run vTPMs; the manufacturer makes them. */
  inProcess?: HostAgent[] | undefined;
  /** The CA that issued remote agents' TLS certificates, when the system's CAs did not. */
  agentCaFile?: string | undefined;
  /** A remote host is `down` once its agent has not been heard of for this long (`--host-down-after`). */
  hostDownAfterMs?: number | undefined;
  /** Hears of every placement that found no host (the metrics count the reasons). */
  placementRefused?: ((refusal: NoValidHostError) => void) | undefined;
}

export class Fleet {
  readonly manufacturer: HostAgent;
  /** The manufacturer first. */
  private readonly inProcess: Map<string, HostAgent>;
  private readonly remotes = new Map<string, RemoteHost>();

  constructor(private readonly options: FleetOptions) {
    this.manufacturer = options.manufacturer;
    const agents = [options.manufacturer, ...(options.inProcess ?? [])];
    this.inProcess = new Map(agents.map((agent) => [agent.hostName, agent]));
  }

  isConnected(host: string): boolean {
    return this.inProcess.has(host) || this.remotes.has(host);
  }

  agentFor(host: string): HostAgent {
    const agent = this.inProcess.get(host) ?? this.remotes.get(host)?.agent;
    if (!agent) throw new StateConflictError(`host ${host} has no agent connected to this control plane`, { host });
    return agent;
  }

  connected(): HostAgent[] {
    return [...this.inProcess.values(), ...[...this.remotes.values()].map((remote) => remote.agent)];
  }

  /**
   * Connects to every registered remote host's agent (at start-up); one that does not answer is used once it
   * reports in. One whose token the key manager cannot give now (it is away) is connected once it can; its
   * agent's reports are not authenticated until then, and the agent tries them again.
   */
  async connectRegistered(): Promise<void> {
    for (const host of await this.options.store.hosts.list()) {
      if (host.agent_url && host.agent_secret_ref)
        await this.connectRegisteredHost(host.name, host.agent_url, host.agent_secret_ref, CONNECT_RETRY_FIRST_MS);
    }
  }

  private async connectRegisteredHost(name: string, url: string, ref: string, pauseMs: number): Promise<void> {
    // Registered again meanwhile: that connection, with its new token, stands.
    if (this.remotes.has(name)) return;
    let token: string;
    try {
      token = await withSecret(this.options.keys, ref, agentToken);
    } catch (error) {
      this.options.logger.warn(
        { host: name, err: error, retryInMs: pauseMs },
        "a remote host's agent token could not be read; the host is connected once it can be",
      );
      const next = Math.min(pauseMs * 2, CONNECT_RETRY_LONGEST_MS);
      const retry = () =>
        this.connectRegisteredHost(name, url, ref, next).catch((failure: unknown) =>
          this.options.logger.error({ host: name, err: failure }, 'a remote host could not be connected'),
        );
      setTimeout(retry, pauseMs).unref();
      return;
    }
    const agent = await this.connect(name, url, token);
    // Connected after start-up: describeAll has gone by, and the agent may have reported in long ago.
    if (pauseMs > CONNECT_RETRY_FIRST_MS) await this.describe(agent);
  }

  /** Records every connected host's traits and capabilities, as its agent describes them. */
  async describeAll(): Promise<void> {
    for (const agent of this.connected()) await this.describe(agent);
  }

  private async describe(agent: HostAgent): Promise<void> {
    try {
      const { name, traits, capabilities, maxVtpms } = await agent.describe();
      await this.options.store.hosts.upsert({ name, traits, capabilities, max_vtpms: maxVtpms ?? null });
    } catch (error) {
      if (this.inProcess.has(agent.hostName)) throw error;
      this.options.logger.warn(
        { host: agent.hostName, err: error },
        'a remote agent did not answer; it is used again once it reports in',
      );
    }
  }

  /**
   * Registers a host whose agent runs remotely and issues its agent token:
   * kept in the key manager (the control plane presents it to the agent, the
   * agent reports with it), shown once. Registering again issues a new
   * token; the old one stops working.
   */
  async register(name: string, url: string): Promise<RegisteredHost> {
    if (this.inProcess.has(name)) {
      throw new StateConflictError(`${name} is the control plane's own host; its agent runs in \`vtpm serve\``, {
        host: name,
      });
    }
    const agentUrl = requireSecureUrl('url', url, "the host agent's API (vTPM keys travel to it)").origin;
    return withWiped(randomBytes(32), async (secret) => {
      const { store, keys } = this.options;
      const ref = await keys.storeSecret(`vtpm-host-agent-${name}`, { project: DEPLOYMENT_PROJECT }, secret);
      const previous = await store.hosts.registerRemote(name, agentUrl, ref);
      if (previous) await keys.deleteSecret(previous);
      const token = agentToken(secret);
      await this.connect(name, agentUrl, token);
      this.options.logger.info({ host: name, url: agentUrl }, 'remote host registered');
      return { name, url: agentUrl, token };
    });
  }

  private async connect(name: string, url: string, token: string): Promise<RemoteHostAgent> {
    // A call made for a user's request carries its id, so the agent's lines are found with the control plane's.
    const requestId = () => requestContext.getStore()?.requestId;
    const client = await ApiClient.withToken({ url, token, caFile: this.options.agentCaFile, requestId });
    const agent = new RemoteHostAgent(name, client);
    this.remotes.set(name, { agent, tokenDigest: digest(token) });
    return agent;
  }

  /** Refuses a report that does not carry `host`'s agent token (compared in constant time). */
  authenticateAgent(host: string, token: string | undefined): void {
    const remote = this.remotes.get(host);
    if (token === undefined || !remote || !timingSafeEqual(digest(token), remote.tokenDigest)) {
      throw new UnauthenticatedError(
        `not host ${host}'s agent token: an agent reports with the token \`vtpm host add\` issued for its host`,
      );
    }
  }

  /** A host's agent is alive (its heartbeat). True when the host was down until now: it came back. */
  async heartbeat(host: string): Promise<boolean> {
    const before = await this.options.store.hosts.get(host);
    await this.options.store.hosts.touch(host);
    return before !== undefined && !this.isUp(before, Date.now());
  }

  /** The control plane's own host is up while it runs; any other while its agent is heard of. */
  private isUp(host: HostRecord, at: number): boolean {
    if (host.name === this.manufacturer.hostName) return true;
    return at - Date.parse(host.last_seen) <= (this.options.hostDownAfterMs ?? HOST_DOWN_AFTER_MS);
  }

  /** False when the host is down or draining: a stopped vTPM of its starts on another host. */
  async keepsItsVtpms(name: string): Promise<boolean> {
    const host = await this.options.store.hosts.get(name);
    return host === undefined || (!host.draining && this.isUp(host, Date.now()));
  }

  /** The host as `vtpm hosts` shows it; undefined when no such host is known. */
  async host(name: string): Promise<HostView | undefined> {
    return (await this.list()).find((host) => host.name === name);
  }

  /** A remote agent is up: its traits and capabilities are recorded, and it learns where its sockets are. */
  async reportedIn(host: string, description: HostDescription): Promise<void> {
    this.remotes.get(host)?.agent.learn(description);
    await this.options.store.hosts.upsert({
      name: host,
      traits: description.traits,
      capabilities: description.capabilities,
      max_vtpms: description.maxVtpms ?? null,
    });
    this.options.logger.info({ host, traits: description.traits }, 'remote agent reported in');
  }

  /**
   * After a restart, a running vTPM's host reports its current state. A
   * remote agent reports through the API, which listens only once start-up
   * is done, so its report is not waited for.
   */
  async resyncAfterRestart(host: string, vm: string): Promise<void> {
    const resynced = this.agentFor(host).resync(vm);
    if (this.inProcess.has(host)) return resynced;
    void resynced.catch((error: unknown) =>
      this.options.logger.warn({ vm, host, err: error }, 'a remote host could not report its state after the restart'),
    );
  }

  /** The connected host that fits the spec best (see scheduler.ts); the refusal names every other's reason. */
  async place(spec: TpmSpec): Promise<string> {
    const counts = await this.options.store.vtpms.countByHost();
    const at = Date.now();
    const candidates = (await this.options.store.hosts.list()).map((h) => ({
      name: h.name,
      traits: h.traits,
      vtpms: counts.get(h.name)?.total ?? 0,
      connected: this.isConnected(h.name),
      downSince: this.isUp(h, at) ? null : h.last_seen,
      disabledReason: h.disabled_reason,
      draining: h.draining,
      maxVtpms: h.max_vtpms,
    }));
    try {
      return chooseHost(spec, candidates).name;
    } catch (error) {
      if (error instanceof NoValidHostError) this.options.placementRefused?.(error);
      throw error;
    }
  }

  /** The host is connected and offers what the spec needs. */
  async requireHostFor(spec: TpmSpec, host: string): Promise<void> {
    this.agentFor(host);
    const known = (await this.options.store.hosts.list()).find((h) => h.name === host);
    chooseHost(
      spec,
      known
        ? [
            {
              name: known.name,
              traits: known.traits,
              vtpms: 0,
              connected: true,
              downSince: null,
              disabledReason: null,
              draining: false,
              maxVtpms: null,
            },
          ]
        : [],
    );
  }

  async list(): Promise<HostView[]> {
    const counts = await this.options.store.vtpms.countByHost();
    const at = Date.now();
    return (await this.options.store.hosts.list()).map((host) => ({
      name: host.name,
      traits: host.traits,
      vtpms: counts.get(host.name)?.total ?? 0,
      running: counts.get(host.name)?.running ?? 0,
      capabilities: host.capabilities,
      last_seen: host.last_seen,
      agent_url: host.agent_url,
      state: this.isUp(host, at) ? 'up' : 'down',
      status: host.disabled_reason === null ? 'enabled' : host.draining ? 'draining' : 'disabled',
      disabled_reason: host.disabled_reason,
      max_vtpms: host.max_vtpms,
    }));
  }
}
