/**
 * A control plane for unit tests of orchestration, in seconds and without
 * QEMU: a real SQLite store and a real local key manager in a temporary
 * directory, a real vault, and FakeHostAgents as hosts. Its key manager can
 * be told to fail the next call of a method.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import pino from 'pino';
import { AuditLog } from '../../audit/audit-log.js';
import type { Principal } from '../../auth/policy.js';
import { Fleet } from '../../fleet/fleet.js';
import type { KeyManager, SecretOwner } from '../../keys/key-manager.js';
import { LocalKeyManager } from '../../keys/local/local-key-manager.js';
import { ProvisioningPool } from '../../pool/provisioning-pool.js';
import { openEmbeddedStore } from '../../store/index.js';
import { StateVault } from '../../vault/state-vault.js';
import { ControlPlaneMetrics } from '../../metrics/service-metrics.js';
import { type ControlPlane, controlPlane } from '../control-plane.js';
import { ingestExit, ingestStateChange } from '../state-ingest.js';
import { FakeHostAgent } from './fake-host-agent.js';

/** Retries of owed work come at once in tests. */
const QUICK_RETRIES = { firstPauseMs: 10, longestPauseMs: 50 };

type KeyCall = 'createSecret' | 'storeSecret' | 'readSecret' | 'deleteSecret' | 'checkReachable';

/** The local key manager, able to fail on demand. */
class FlakyKeyManager implements KeyManager {
  readonly kind = 'flaky-local';
  readonly ownerScoped = false;
  private readonly failures = new Map<KeyCall, number>();
  /** Every reference this key manager handed out, for checks that none is left behind. */
  readonly made: string[] = [];

  constructor(private readonly keys: KeyManager) {}

  /** The next `times` calls of `method` fail with "key manager unavailable". */
  failNext(method: KeyCall, times = 1): void {
    this.failures.set(method, times);
  }

  private remember(ref: string): string {
    this.made.push(ref);
    return ref;
  }

  /** The references handed out that still name a secret. */
  async held(): Promise<string[]> {
    const held: string[] = [];
    for (const ref of this.made) if (await this.holds(ref)) held.push(ref);
    return held;
  }

  private enter(method: KeyCall): void {
    const left = this.failures.get(method) ?? 0;
    if (left === 0) return;
    this.failures.set(method, left - 1);
    throw new Error(`key manager unavailable (injected into ${method})`);
  }

  async createSecret(label: string, owner: SecretOwner): Promise<string> {
    this.enter('createSecret');
    return this.remember(await this.keys.createSecret(label, owner));
  }

  async storeSecret(label: string, owner: SecretOwner, secret: Buffer): Promise<string> {
    this.enter('storeSecret');
    return this.remember(await this.keys.storeSecret(label, owner, secret));
  }

  async readSecret(ref: string): Promise<Buffer> {
    this.enter('readSecret');
    return this.keys.readSecret(ref);
  }

  async deleteSecret(ref: string): Promise<void> {
    this.enter('deleteSecret');
    return this.keys.deleteSecret(ref);
  }

  async checkReachable(): Promise<void> {
    this.enter('checkReachable');
    return this.keys.checkReachable();
  }

  /** Whether the key manager still holds the secret (for checks that a secret was erased). */
  async holds(ref: string): Promise<boolean> {
    return this.keys.readSecret(ref).then(
      (secret) => {
        secret.fill(0);
        return true;
      },
      () => false,
    );
  }

  close(): Promise<void> {
    return this.keys.close();
  }
}

export interface TestControlPlane {
  /** Replaced by restart(). */
  cp: ControlPlane;
  keys: FlakyKeyManager;
  /** The control plane's own host. */
  local: FakeHostAgent;
  dataDir: string;
  /** Until the exits the hosts reported have been ingested (an agent's exit report is not waited for). */
  settle(): Promise<void>;
  /**
   * A control plane restarted over the same store, key manager and hosts: nothing held in memory survives.
   * What `whileDown` makes the hosts do, no control plane hears.
   */
  restart(whileDown?: () => Promise<void>): Promise<ControlPlane>;
  close(): Promise<void>;
}

export interface TestControlPlaneOptions {
  /** Further hosts, joined in process beside `local`. */
  hosts?: FakeHostAgent[];
  /** A provisioning pool of this size on `local`, filled before the control plane is handed out. */
  poolSize?: number;
  /** The fleet's --host-down-after, in ms. */
  hostDownAfterMs?: number;
}

export const alice: Principal = { name: 'alice', project: 'p1', roles: ['member'] };

/** Reports of a fake host reach the control plane as a real agent's do; exits under way are kept in `pending`. */
function wireReports(cp: ControlPlane, agent: FakeHostAgent, pending = new Set<Promise<void>>()): void {
  agent.onStateChange((change) => ingestStateChange(cp, agent.hostName, change));
  agent.onExit((exit) => {
    const ingested: Promise<void> = ingestExit(cp, agent.hostName, exit)
      .catch(() => undefined)
      .finally(() => pending.delete(ingested));
    pending.add(ingested);
  });
}

export async function openTestControlPlane(options: TestControlPlaneOptions = {}): Promise<TestControlPlane> {
  const dataDir = await mkdtemp(join(tmpdir(), 'vtpm-orchestration-'));
  const store = await openEmbeddedStore(dataDir);
  const keys = new FlakyKeyManager(await LocalKeyManager.open(dataDir));
  const logger = pino({ level: 'silent' });
  const local = new FakeHostAgent('host-a');
  const others = options.hosts ?? [];
  const metrics = new ControlPlaneMetrics();
  const fleet = new Fleet({
    store,
    keys,
    logger,
    manufacturer: local,
    inProcess: others,
    hostDownAfterMs: options.hostDownAfterMs,
    placementRefused: metrics.placementRefused,
  });
  const poolSize = options.poolSize ?? 0;
  const pool = poolSize > 0 ? new ProvisioningPool(store, keys, local, logger, poolSize, ['2.0']) : undefined;
  const parts = {
    store,
    keys,
    vault: new StateVault(store, { newest: 20, days: 0 }, metrics.generationCommitted),
    fleet,
    audit: new AuditLog(store),
    pool,
    metrics,
    logger,
    dataDir,
  };
  const pending = new Set<Promise<void>>();
  const agents = [local, ...others];
  const wire = (cp: ControlPlane) => {
    for (const agent of agents) wireReports(cp, agent, pending);
    return cp;
  };
  await fleet.describeAll();
  // The other hosts' agents heartbeat as remote agents do, until a test loses their host.
  const heartbeats = setInterval(
    () => {
      for (const agent of others) if (!agent.lost) fleet.heartbeat(agent.hostName).catch(() => undefined);
    },
    Math.min(1_000, (options.hostDownAfterMs ?? 15_000) / 4),
  );
  pool?.refill();
  while (pool && (await store.pool.count('2.0')) < poolSize) await delay(5);
  const opened: TestControlPlane = {
    cp: wire(controlPlane(parts, QUICK_RETRIES)),
    keys,
    local,
    dataDir,
    async settle() {
      while (pending.size > 0) await Promise.all([...pending]);
    },
    async restart(whileDown) {
      await opened.settle();
      await opened.cp.retries.close();
      for (const agent of agents) await agent.close();
      await whileDown?.();
      opened.cp = wire(controlPlane(parts, QUICK_RETRIES));
      return opened.cp;
    },
    async close() {
      clearInterval(heartbeats);
      await opened.settle();
      await opened.cp.retries.close();
      await pool?.close();
      await keys.close();
      await store.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
  return opened;
}
