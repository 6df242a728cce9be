/**
 * What one fault scenario runs: `vtpm serve` (the control plane and the
 * first host) on a data directory that is a small tmpfs of its own, with the
 * TPM working copies on another (so that filling the first leaves swtpm
 * writing); a second host, `vtpm agent`, whose traffic with the control plane
 * passes through a fault proxy in each direction; and the ports that stay
 * the same across restarts, so each side finds the other again.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { freePort } from '../e2e/support/net.js';
import { temporaryDir } from '../e2e/support/service.js';
import type { Prng } from './prng.js';
import { Agent, type AgentSettings, killQuietly, Serve, swtpmProcesses } from './processes.js';
import { FaultProxy, type ProxyFault } from './proxy.js';
import { mountTmpfs, unmount } from './storage.js';

export const REMOTE_HOST = 'host-b';
/** The control plane's data directory: database, keys, CA; room for a scenario's generations (about 150 MiB). */
const DATA_TMPFS_MIB = 512;
const TPM_TMPFS_MIB = 64;

interface HostJson {
  name: string;
  traits: string[];
  agent_url: string | null;
}

export class World {
  private current: Serve | undefined;
  private currentAgent: Agent | undefined;
  /** Every process this scenario ran, for their logs. */
  readonly logs: Array<{ name: string; log: string }> = [];
  localHost = '';
  dir = '';
  dataDir = '';
  agentDataDir = '';
  private servePort = 0;
  private agentSettings: AgentSettings | undefined;
  private readonly mounts: string[] = [];
  private toControlPlane: FaultProxy | undefined;
  private toAgent: FaultProxy | undefined;

  constructor(private readonly prng: Prng) {}

  get serve(): Serve {
    if (!this.current || this.current.exited) throw new Error('vtpm serve is not running');
    return this.current;
  }

  get serveRunning(): boolean {
    return this.current !== undefined && !this.current.exited;
  }

  get agent(): Agent | undefined {
    return this.currentAgent;
  }

  /** The data directory of each host, by host name. */
  get dataDirs(): Map<string, string> {
    return new Map([
      [this.localHost, this.dataDir],
      [REMOTE_HOST, this.agentDataDir],
    ]);
  }

  get proxies(): FaultProxy[] {
    return [this.toControlPlane, this.toAgent].filter((p): p is FaultProxy => p !== undefined);
  }

  async setUp(): Promise<void> {
    this.dir = await temporaryDir('vtpm-faults');
    this.dataDir = join(this.dir, 'data');
    this.agentDataDir = join(this.dir, REMOTE_HOST, 'data');
    await mkdir(this.dataDir, { mode: 0o711 });
    await mountTmpfs(this.dataDir, DATA_TMPFS_MIB);
    this.mounts.push(this.dataDir);
    await mkdir(join(this.dataDir, 'tpm'), { mode: 0o711 });
    await mountTmpfs(join(this.dataDir, 'tpm'), TPM_TMPFS_MIB);
    this.mounts.push(join(this.dataDir, 'tpm'));
    this.servePort = await freePort();
    await this.startServe();
    this.localHost = (await this.hosts()).find((h) => h.agent_url === null)!.name;

    const agentPort = await freePort();
    this.toControlPlane = await FaultProxy.listen(await freePort(), this.servePort, this.prng.fork(), (path) =>
      /\/(state-changes|exits)$/.test(path),
    );
    this.toAgent = await FaultProxy.listen(await freePort(), agentPort, this.prng.fork());
    this.agentSettings = await Agent.register(
      this.serve,
      { name: REMOTE_HOST, dataDir: this.agentDataDir, port: agentPort, controlPlane: this.toControlPlane.url },
      this.toAgent.url,
    );
    await this.startAgent();
  }

  private async hosts(): Promise<HostJson[]> {
    return (await this.serve.api<{ hosts: HostJson[] }>('GET', '/hosts')).hosts;
  }

  /** Starts `vtpm serve` on the scenario's data directory and port. */
  async startServe(): Promise<Serve> {
    const serve = await Serve.start(this.dataDir, this.servePort);
    this.current = serve;
    this.logs.push({
      name: 'serve',
      get log() {
        return serve.log;
      },
    });
    return serve;
  }

  /** Another `vtpm serve` on the same data directory (and another port): it must refuse. */
  secondServe(): Promise<Serve> {
    return freePort().then((port) => Serve.start(this.dataDir, port, 20_000));
  }

  /** Starts the remote host's agent and waits until the control plane has heard from it. */
  async startAgent(): Promise<void> {
    const agent = await Agent.start(this.agentSettings!);
    this.currentAgent = agent;
    this.logs.push({
      name: 'agent',
      get log() {
        return agent.log;
      },
    });
    const deadline = Date.now() + 60_000;
    for (;;) {
      const hosts = await this.hosts().catch(() => []);
      if (hosts.find((h) => h.name === REMOTE_HOST)?.traits.includes('COMPUTE_SECURITY_TPM_2_0')) return;
      if (agent.exited || Date.now() > deadline)
        throw new Error(`host ${REMOTE_HOST}'s agent did not report in:\n${agent.log.slice(-2000)}`);
      await delay(200);
    }
  }

  /** Another `vtpm agent` on the remote host's data directory (and another port): it must refuse. */
  async secondAgent(): Promise<Agent> {
    return Agent.start({ ...this.agentSettings!, port: await freePort() }, 20_000);
  }

  setProxyFault(fault: ProxyFault | undefined): void {
    // Replays are of the agent's reports: the control plane's calls carry nothing worth replaying here.
    this.toControlPlane?.set(fault);
    this.toAgent?.set(fault === 'replay' ? undefined : fault);
  }

  /** Everything stopped and removed, the file systems unmounted, whatever state the scenario is in. */
  async tearDown(vms: readonly string[]): Promise<void> {
    const quietly = (step: () => Promise<unknown>) => step().catch(() => undefined);
    this.setProxyFault(undefined);
    if (this.serveRunning)
      for (const vm of vms) await quietly(() => this.serve.api('DELETE', `/vtpms/${vm}?force=true`));
    await quietly(async () => this.currentAgent?.stop());
    await quietly(async () => this.current?.stop());
    for (const proxy of this.proxies) await quietly(() => proxy.close());
    await quietly(async () => {
      for (const { pid } of await swtpmProcesses([...this.dataDirs.values()])) killQuietly(pid);
    });
    for (const mount of this.mounts.reverse()) await quietly(() => unmount(mount));
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}
