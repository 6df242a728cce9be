/** Reading the audit log through the API: an admin sees every event, others their project's. */
import type { AuditVerification, AuditView } from '../api/identity.js';
import { enforceOnDeployment, type Principal, seesAllProjects } from '../auth/policy.js';
import type { AuditLog } from './audit-log.js';

export async function listEvents(
  audit: AuditLog,
  filter: { vm?: string | undefined; limit: number },
  actor: Principal,
): Promise<AuditView[]> {
  enforceOnDeployment(actor, 'audit-read');
  return audit.list({ ...filter, project: seesAllProjects(actor) ? undefined : actor.project });
}

export async function verifyAudit(audit: AuditLog, actor: Principal): Promise<AuditVerification> {
  enforceOnDeployment(actor, 'audit-verify');
  return audit.verify();
}
