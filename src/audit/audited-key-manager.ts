/**
 * A key manager that records every read and deletion of a secret, and every
 * rotation, in the audit log, as the principal of the request under way.
 */
import type { KeyFile, KeyManager, RotationReport, SecretOwner } from '../keys/key-manager.js';
import { requestContext, type AuditLog } from './audit-log.js';

/** A key manager that records every read of a secret in the audit log, as the request's principal. */
export class AuditedKeyManager implements KeyManager {
  /** `replaceAll` rotates for key managers that cannot re-wrap in place (src/control/secret-rotation.ts). */
  constructor(
    private readonly keys: KeyManager,
    private readonly audit: AuditLog,
    private readonly replaceAll: (keys: KeyManager) => Promise<RotationReport>,
  ) {}

  get kind(): string {
    return this.keys.kind;
  }

  get ownerScoped(): boolean {
    return this.keys.ownerScoped;
  }

  createSecret(label: string, owner: SecretOwner): Promise<string> {
    return this.keys.createSecret(label, owner);
  }

  storeSecret(label: string, owner: SecretOwner, secret: Buffer): Promise<string> {
    return this.keys.storeSecret(label, owner, secret);
  }

  async readSecret(ref: string): Promise<Buffer> {
    try {
      const secret = await this.keys.readSecret(ref);
      const read = requestContext.getStore()?.secretsRead;
      if (!read?.has(ref)) {
        await this.recordSecret('secret.read', ref, 'ok');
        read?.add(ref);
      }
      return secret;
    } catch (error) {
      await this.recordSecret('secret.read', ref, (error as { code?: string }).code ?? 'failed');
      throw error;
    }
  }

  async deleteSecret(ref: string): Promise<void> {
    await this.keys.deleteSecret(ref);
    await this.recordSecret('secret.delete', ref, 'ok');
  }

  private async recordSecret(operation: string, ref: string, result: string): Promise<void> {
    const context = requestContext.getStore();
    await this.audit.record({
      operation,
      vm: context?.vm,
      project: await context?.project?.(),
      result,
      detail: { secret: ref },
    });
  }

  /** Every rotation, whichever way the key manager rotates, is one audited operation. */
  async rotate(): Promise<RotationReport> {
    try {
      const report = this.keys.rotate ? await this.keys.rotate() : await this.replaceAll(this);
      await this.audit.record({
        operation: 'keys.rotate',
        result: 'ok',
        detail: { rewrapped: report.rewrapped, already_rewrapped: report.already_rewrapped },
      });
      return report;
    } catch (error) {
      await this.audit.record({ operation: 'keys.rotate', result: (error as { code?: string }).code ?? 'failed' });
      throw error;
    }
  }

  /** A backend without files of its own in the data directory gives a backup none. */
  backup<T>(work: (files: KeyFile[]) => Promise<T>): Promise<T> {
    return this.keys.backup ? this.keys.backup(work) : work([]);
  }

  checkReachable(): Promise<void> {
    return this.keys.checkReachable();
  }

  close(): Promise<void> {
    return this.keys.close();
  }
}
