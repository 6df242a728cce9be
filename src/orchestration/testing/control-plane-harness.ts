/**
 * A control plane for unit tests of orchestration, in seconds and without
 * QEMU: a real SQLite store and a real local key manager in a temporary
 * directory, a real vault, and FakeHostAgents as hosts. Its key manager can
 * be told to fail the next call of a method.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { AuditLog } from '../../audit/audit-log.js';
import type { Principal } from '../../auth/policy.js';
import { Fleet } from '../../fleet/fleet.js';
import type { KeyManager, SecretOwner } from '../../keys/key-manager.js';
import { LocalKeyManager } from '../../keys/local/local-key-manager.js';
import { openEmbeddedStore } from '../../store/index.js';
import { StateVault } from '../../vault/state-vault.js';
import { type ControlPlane, controlPlane } from '../control-plane.js';
import { ingestExit, ingestStateChange } from '../state-ingest.js';
import { FakeHostAgent } from './fake-host-agent.js';

type KeyCall = 'createSecret' | 'storeSecret' | 'readSecret' | 'deleteSecret';

/** The local key manager, able to fail on demand. */
export class FlakyKeyManager implements KeyManager {
  readonly kind = 'flaky-local';
  readonly ownerScoped = false;
  private readonly failures = new Map<KeyCall, number>();

  constructor(private readonly keys: KeyManager) {}

  /** The next `times` calls of `method` fail with "key manager unavailable". */
  failNext(method: KeyCall, times = 1): void {
    this.failures.set(method, times);
  }

  private enter(method: KeyCall): void {
    const left = this.failures.get(method) ?? 0;
    if (left === 0) return;
    this.failures.set(method, left - 1);
    throw new Error(`key manager unavailable (injected into ${method})`);
  }

  async createSecret(label: string, owner: SecretOwner): Promise<string> {
    this.enter('createSecret');
    return this.keys.createSecret(label, owner);
  }

  async storeSecret(label: string, owner: SecretOwner, secret: Buffer): Promise<string> {
    this.enter('storeSecret');
    return this.keys.storeSecret(label, owner, secret);
  }

  async readSecret(ref: string): Promise<Buffer> {
    this.enter('readSecret');
    return this.keys.readSecret(ref);
  }

  async deleteSecret(ref: string): Promise<void> {
    this.enter('deleteSecret');
    return this.keys.deleteSecret(ref);
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
  cp: ControlPlane;
  keys: FlakyKeyManager;
  /** The control plane's own host. */
  local: FakeHostAgent;
  dataDir: string;
  close(): Promise<void>;
}

export const alice: Principal = { name: 'alice', project: 'p1', roles: ['member'] };

/** Reports of a fake host reach the control plane as a real agent's do. */
export function wireReports(cp: ControlPlane, agent: FakeHostAgent): void {
  agent.onStateChange((change) => ingestStateChange(cp, agent.hostName, change));
  agent.onExit((exit) => void ingestExit(cp, agent.hostName, exit).catch(() => undefined));
}

export async function openTestControlPlane(): Promise<TestControlPlane> {
  const dataDir = await mkdtemp(join(tmpdir(), 'vtpm-orchestration-'));
  const store = await openEmbeddedStore(dataDir);
  const keys = new FlakyKeyManager(await LocalKeyManager.open(dataDir));
  const logger = pino({ level: 'silent' });
  const local = new FakeHostAgent('host-a');
  const fleet = new Fleet({ store, keys, logger, manufacturer: local });
  const cp = controlPlane({
    store,
    keys,
    vault: new StateVault(store, 20),
    fleet,
    audit: new AuditLog(store),
    pool: undefined,
    logger,
  });
  wireReports(cp, local);
  await fleet.describeAll();
  return {
    cp,
    keys,
    local,
    dataDir,
    async close() {
      await keys.close();
      await store.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
