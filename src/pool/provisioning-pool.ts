/**
 * Instant provisioning: TPMs manufactured ahead of demand, so that creating a
 * vTPM does not wait for RSA and ECC key generation. Each entry has its own
 * secret in the key manager and is protected at rest like any state (sealed
 * under a key derived from that secret). Creating a vTPM takes the oldest
 * entry of its version; its secret becomes the vTPM's secret.
 *
 * The EK certificates swtpm_setup issues when a pooled TPM is manufactured
 * name the pool entry; creating a vTPM from it has them issued anew for the
 * VM (create.ts, swtpm/issue-ek-certificates.ts), so every vTPM's name its
 * VM, pooled or made inline.
 *
 * Refilling runs in the background, one manufacture at a time, at the lowest
 * CPU priority, so that it never competes with running guests; a pause after
 * each manufacture caps the refill rate where even that is too much.
 */
import { hkdfSync, randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { HostAgent } from '../agent/host-agent.js';
import { KEY_BYTES, open, seal } from '../keys/aead.js';
import type { KeyManager } from '../keys/key-manager.js';
import { withSecret, withWipedSync } from '../keys/wiped.js';
import type { TpmVersion } from '../tpm-spec/tpm-spec.js';
import { DEPLOYMENT_PROJECT, type PoolEntry, type Store } from '../store/index.js';
import type { EkCertificate } from '../swtpm/manufacture.js';
import { openEkCertificates, sealEkCertificates } from '../vault/ek-certificates.js';

const RETRY_AFTER_FAILURE_MS = 10_000;

const stateKey = (secret: Buffer) =>
  Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), 'vtpm-manager pool state v1', KEY_BYTES));
const stateAad = (id: string) => `vtpm-manager/pool/${id}/state`;

export interface PooledTpm {
  state: Buffer;
  ekCertificates: EkCertificate[];
}

export function openPoolEntry(entry: PoolEntry, secret: Buffer): PooledTpm {
  return {
    state: open(stateKey(secret), entry.state, stateAad(entry.id), `pool entry ${entry.id}`),
    ekCertificates: openEkCertificates(secret, entry.id, entry.ek_certificates),
  };
}

export class ProvisioningPool {
  private running: Promise<void> | undefined;
  private again = false;
  private closed = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private readonly closing = new AbortController();

  constructor(
    private readonly store: Store,
    private readonly keys: KeyManager,
    private readonly agent: HostAgent,
    private readonly logger: Logger,
    /** Entries to keep ready for each version; 0 turns the pool off. */
    readonly size: number,
    private readonly versions: readonly TpmVersion[],
    /** Pause after each manufacture, in ms: the refill rate's cap. */
    readonly refillPauseMs = 0,
  ) {}

  /** Starts refilling, or notes that another pass is needed when one is under way. */
  refill(): void {
    if (this.closed || this.size === 0) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.fill()
      .catch((error: unknown) => {
        this.logger.warn(
          { err: error },
          `refilling the provisioning pool failed; retrying in ${RETRY_AFTER_FAILURE_MS / 1000} s`,
        );
        this.retryTimer = setTimeout(() => this.refill(), RETRY_AFTER_FAILURE_MS);
        this.retryTimer.unref();
      })
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.refill();
        }
      });
  }

  private async fill(): Promise<void> {
    for (const version of this.versions) {
      while (!this.closed && (await this.store.pool.count(version)) < this.size) {
        await this.manufactureOne(version);
        if (this.refillPauseMs > 0)
          await delay(this.refillPauseMs, undefined, { signal: this.closing.signal }).catch(() => undefined);
      }
    }
  }

  private async manufactureOne(version: TpmVersion): Promise<void> {
    const id = randomUUID();
    const secretRef = await this.keys.createSecret(`vtpm-pool-${id}`, { project: DEPLOYMENT_PROJECT });
    try {
      await withSecret(this.keys, secretRef, async (secret) => {
        const manufactured = await this.agent.manufacture({
          vm: id,
          spec: { version, model: 'tpm-tis' },
          stateKey: secret,
          background: true,
        });
        await this.store.pool.add({
          id,
          version,
          secret_ref: secretRef,
          state: withWipedSync(stateKey(secret), (key) => seal(key, manufactured.state, stateAad(id))),
          ek_certificates: sealEkCertificates(secret, id, manufactured.ekCertificates),
        });
      });
    } catch (error) {
      await this.keys.deleteSecret(secretRef);
      throw error;
    }
  }

  /** Stops refilling and waits for a manufacture under way. */
  async close(): Promise<void> {
    this.closed = true;
    this.closing.abort();
    clearTimeout(this.retryTimer);
    await this.running;
  }
}
