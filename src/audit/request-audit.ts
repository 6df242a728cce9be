/**
 * What the audit log records of an API request: every state-changing
 * request, allowed or refused, authenticated or not, with the vTPM and the
 * project it was about; never bodies, which may carry passphrases or state.
 */
import type { Principal } from '../auth/policy.js';
import type { Store } from '../store/index.js';
import type { AuditLog } from './audit-log.js';

export interface AuditedRequest {
  operation: string;
  vm: string | undefined;
  /** The project of the vTPM, as it was before the request (a deleted vTPM's too). */
  project: string | undefined;
  result: string;
  detail: Record<string, string | number>;
}

const NO_TOKEN = { name: '(no valid token)', project: '-' };

export class RequestAudit {
  constructor(
    private readonly store: Store,
    private readonly audit: AuditLog,
  ) {}

  /** The project a request on `vm` is about: the vTPM's, or for a vTPM being created, the creator's. */
  async projectOf(vm: string | undefined, creatingFor: Principal | undefined): Promise<string | undefined> {
    if (vm === undefined) return undefined;
    const record = await this.store.vtpms.get(vm).catch(() => undefined);
    return record?.project ?? creatingFor?.project;
  }

  async record(request: AuditedRequest, actor: Principal | null): Promise<void> {
    await this.audit.record(request, actor ?? NO_TOKEN);
  }
}
