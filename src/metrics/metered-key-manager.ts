/**
 * A key manager whose every call is timed and counted, by operation and
 * result: the operator sees a key manager that slows or fails before users
 * do (BENCHMARKS and the alert rules read `vtpm_key_manager_*`).
 */
import type { KeyFile, KeyManager, RotationReport, SecretOwner } from '../keys/key-manager.js';
import type { ControlPlaneMetrics } from './service-metrics.js';

type Metered = Pick<ControlPlaneMetrics, 'keyManagerDuration' | 'keyManagerErrors'>;

export class MeteredKeyManager implements KeyManager {
  /** Present only where the backend rotates in place: the caller rotates the others by replacement. */
  readonly rotate?: () => Promise<RotationReport>;

  constructor(
    private readonly keys: KeyManager,
    private readonly metrics: Metered,
  ) {
    const { rotate } = keys;
    if (rotate) this.rotate = () => this.timed('rotate', () => rotate.call(keys));
  }

  get kind(): string {
    return this.keys.kind;
  }

  get ownerScoped(): boolean {
    return this.keys.ownerScoped;
  }

  private async timed<T>(operation: string, call: () => Promise<T>): Promise<T> {
    const end = this.metrics.keyManagerDuration.startTimer({ operation });
    try {
      const result = await call();
      end({ result: 'ok' });
      return result;
    } catch (error) {
      end({ result: 'error' });
      this.metrics.keyManagerErrors.inc({ operation });
      throw error;
    }
  }

  createSecret(label: string, owner: SecretOwner): Promise<string> {
    return this.timed('create', () => this.keys.createSecret(label, owner));
  }

  storeSecret(label: string, owner: SecretOwner, secret: Buffer): Promise<string> {
    return this.timed('store', () => this.keys.storeSecret(label, owner, secret));
  }

  readSecret(ref: string): Promise<Buffer> {
    return this.timed('read', () => this.keys.readSecret(ref));
  }

  deleteSecret(ref: string): Promise<void> {
    return this.timed('delete', () => this.keys.deleteSecret(ref));
  }

  checkReachable(): Promise<void> {
    return this.timed('check', () => this.keys.checkReachable());
  }

  /** A backend without files of its own in the data directory gives a backup none. */
  backup<T>(work: (files: KeyFile[]) => Promise<T>): Promise<T> {
    return this.keys.backup ? this.keys.backup(work) : work([]);
  }

  close(): Promise<void> {
    return this.keys.close();
  }
}
