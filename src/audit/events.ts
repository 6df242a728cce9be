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
  if (seesAllProjects(actor)) return audit.list(filter);
  // A member sees what it did itself too, also on another project's vTPM (refused as not found); whose that
  // vTPM was is not the member's to learn.
  const events = await audit.list({ ...filter, project: actor.project });
  return events.map((event) => (event.project === actor.project ? event : { ...event, project: null }));
}

export async function verifyAudit(audit: AuditLog, actor: Principal): Promise<AuditVerification> {
  enforceOnDeployment(actor, 'audit-verify');
  return audit.verify();
}
