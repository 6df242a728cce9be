/**
 * What every operation works with: the store, the key manager, the vault,
 * the fleet of hosts, and the few things held in memory between operations.
 * An operation is a module of its own (create.ts, start.ts, ...) taking this.
 */
import type { Logger } from 'pino';
import type { AuditLog } from '../audit/audit-log.js';
import type { Fleet } from '../fleet/fleet.js';
import type { KeyManager } from '../keys/key-manager.js';
import type { ControlPlaneMetrics } from '../metrics/service-metrics.js';
import type { ProvisioningPool } from '../pool/provisioning-pool.js';
import type { Store } from '../store/index.js';
import type { StateVault } from '../vault/state-vault.js';
import { BackgroundRetries, type RetryTiming } from './background-retries.js';
import { KeyedLock } from './keyed-lock.js';
import { MigrationsUnderWay } from './migrations-under-way.js';
import { VaultKeyRing } from './vault-key-ring.js';

export interface ControlPlane {
  readonly store: Store;
  readonly keys: KeyManager;
  readonly vault: StateVault;
  readonly fleet: Fleet;
  readonly audit: AuditLog;
  readonly pool: ProvisioningPool | undefined;
  readonly logger: Logger;
  /** What Prometheus reads (GET /metrics). */
  readonly metrics: ControlPlaneMetrics;
  /** The control plane's own data directory (its database, key files and CA, which a backup copies). */
  readonly dataDir: string;
  /** One VM's operations run one at a time. */
  readonly locks: KeyedLock;
  readonly vaultKeys: VaultKeyRing;
  readonly migrations: MigrationsUnderWay;
  /** Work owed that failed once and is tried again until it succeeds (see reconcile). */
  readonly retries: BackgroundRetries;
}

export type ControlPlaneParts = Omit<ControlPlane, 'locks' | 'vaultKeys' | 'migrations' | 'retries'>;

export function controlPlane(parts: ControlPlaneParts, retryTiming?: RetryTiming): ControlPlane {
  return {
    ...parts,
    locks: new KeyedLock(),
    vaultKeys: new VaultKeyRing(),
    migrations: new MigrationsUnderWay(),
    retries: new BackgroundRetries(retryTiming),
  };
}
