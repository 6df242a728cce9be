/**
 * The audit log's name for each state-changing route of the user API: what
 * was done (`vtpm.start`), not how it was asked (`POST /v1/vtpms/:vm/start`).
 * A state-changing route without a name here stops the API from being built
 * (see the onRoute hook in plugin.ts), so none goes unnamed in the log.
 */
const OPERATIONS: Readonly<Record<string, string>> = {
  'POST /v1/vtpms': 'vtpm.create',
  'PATCH /v1/vtpms/:vm': 'vtpm.update',
  'DELETE /v1/vtpms/:vm': 'vtpm.delete',
  'POST /v1/vtpms/:vm/start': 'vtpm.start',
  'POST /v1/vtpms/:vm/stop': 'vtpm.stop',
  'POST /v1/vtpms/:vm/migrate': 'vtpm.migrate',
  'POST /v1/vtpms/adopt': 'vtpm.adopt',
  'POST /v1/vtpms/:vm/restore': 'vtpm.restore',
  'POST /v1/vtpms/:vm/export': 'vtpm.export',
  'POST /v1/vtpms/import': 'vtpm.import',
  'POST /v1/hosts': 'host.add',
  'POST /v1/hosts/:name/disable': 'host.disable',
  'POST /v1/hosts/:name/enable': 'host.enable',
  'POST /v1/hosts/:name/drain': 'host.drain',
  'POST /v1/hosts/:name/evacuate': 'host.evacuate',
  'POST /v1/keys/rotate': 'keys.rotate.request',
  'POST /v1/backup': 'deployment.backup',
  'POST /v1/users': 'user.create',
  'DELETE /v1/users/:name': 'user.delete',
  'POST /v1/users/:name/tokens': 'token.create',
  'DELETE /v1/tokens/:id': 'token.revoke',
};

/** A request to a path no route serves. */
const UNROUTED = 'request.unrouted';

export function changesState(method: string): boolean {
  return method !== 'GET' && method !== 'HEAD' && method !== 'OPTIONS';
}

export function auditedOperation(method: string, route: string | undefined): string {
  return route === undefined ? UNROUTED : (OPERATIONS[`${method} ${route}`] ?? UNROUTED);
}

/** Throws for a state-changing route the audit log has no name for: a new route must be named above. */
export function requireAuditName(method: string, route: string): void {
  if (changesState(method) && OPERATIONS[`${method} ${route}`] === undefined)
    throw new Error(`the audit log has no name for ${method} ${route}: add it to audited-operations.ts`);
}
