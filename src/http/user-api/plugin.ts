/**
 * The users' API under /v1, as one encapsulated plugin: bearer tokens of
 * users (auth/tokens.ts), the audit of every state-changing request, and the
 * routes, which call the operations only. Authorisation is the operations'
 * (through auth/policy.ts), never the routes'.
 */
import type { FastifyInstance, FastifyPluginAsync, FastifyRequest } from 'fastify';
import { isUuid, bearerToken } from '../../api/patterns.js';
import { type AuditEntry, type RequestAnswer, requestContext } from '../../audit/audit-log.js';
import { type AuditedRequest, RequestAudit } from '../../audit/request-audit.js';
import type { Principal } from '../../auth/policy.js';
import { authenticate } from '../../auth/tokens.js';
import { UnauthenticatedError } from '../../errors.js';
import type { ControlPlane } from '../../orchestration/control-plane.js';
import { handleNotFound } from '../error-handler.js';
import { auditedOperation, changesState, requireAuditName } from './audited-operations.js';
import { AuthThrottle } from './auth-throttle.js';
import { registerBackupRoutes } from './backup-routes.js';
import { registerHostRoutes } from './host-routes.js';
import { registerIdentityRoutes } from './identity-routes.js';
import { registerVaultRoutes } from './vault-routes.js';
import { registerVtpmRoutes } from './vtpm-routes.js';

declare module 'fastify' {
  interface FastifyRequest {
    actor: Principal | null;
    /** The project of the vTPM the request is about, as it was before the request. */
    vtpmProject: string | null;
    /** What the audit log says of the request if it succeeds; its operation may commit that itself. */
    auditAnswer: RequestAnswer | null;
  }
}

/** Routes whose vTPM does not exist yet: it is being created, in the caller's project. */
const CREATING_ROUTES = new Set(['/v1/vtpms', '/v1/vtpms/import', '/v1/vtpms/adopt']);

/** The VM a request is about: its path's, or a create's body's; only a well-formed UUID, never arbitrary input. */
function vmOf(request: FastifyRequest): string | undefined {
  const params = request.params as { vm?: unknown } | undefined;
  const body = request.body as { vm?: unknown } | undefined;
  const candidate = params?.vm ?? body?.vm;
  return typeof candidate === 'string' && isUuid(candidate) ? candidate.toLowerCase() : undefined;
}

/** The status a route answers with when it succeeds: the first 2xx of its response schema. */
function successStatus(request: FastifyRequest): number {
  const statuses = Object.keys((request.routeOptions.schema?.response ?? {}) as object).map(Number);
  return statuses.filter((status) => status >= 200 && status < 300).sort((a, b) => a - b)[0] ?? 200;
}

/** The audit entry of a state-changing request answered with `status`; never bodies. */
function requestEntry(request: FastifyRequest, status: number, project: string | undefined): AuditedRequest {
  const params = (request.params ?? {}) as Record<string, string | undefined>;
  return {
    // A check that changes nothing is not recorded as the change itself.
    operation:
      auditedOperation(request.method, request.routeOptions.url) +
      ((request.query as { dry_run?: unknown } | undefined)?.dry_run === true ? '.dry_run' : ''),
    vm: vmOf(request),
    project,
    result: request.failureCode ?? (status < 400 ? 'ok' : `http_${status}`),
    detail: {
      status,
      // The route template only: a path a caller made up goes no further than `request.unrouted`.
      ...(request.routeOptions.url !== undefined && { route: `${request.method} ${request.routeOptions.url}` }),
      ...(params.name !== undefined && { user: params.name }),
      ...(params.id !== undefined && { token: params.id }),
    },
  };
}

const sameEntry = (a: AuditEntry, b: AuditEntry) => JSON.stringify(a) === JSON.stringify(b);

export function actorOf(request: FastifyRequest): Principal {
  if (!request.actor) throw new UnauthenticatedError();
  return request.actor;
}

export const userApi: FastifyPluginAsync<{ cp: ControlPlane }> = async (app: FastifyInstance, { cp }) => {
  const requestAudit = new RequestAudit(cp.store, cp.audit);
  app.decorateRequest('actor', null);
  app.decorateRequest('vtpmProject', null);
  app.decorateRequest('auditAnswer', null);
  app.setNotFoundHandler(handleNotFound);

  app.addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) requireAuditName(method, route.url);
  });

  const throttle = new AuthThrottle();
  app.addHook('onRequest', async (request) => {
    const token = bearerToken(request.headers.authorization);
    // A valid token always passes; an address that keeps failing gets no further than this.
    if (!token) throttle.check(request.ip);
    const actor = token ? await authenticate(cp.store, token) : undefined;
    if (!actor) {
      throttle.check(request.ip);
      throttle.failed(request.ip);
      throw new UnauthenticatedError(
        'missing, unknown, expired or revoked API token: ' +
          "pass --token-file, set VTPM_TOKEN, or point --data-dir at the server's data directory",
      );
    }
    request.actor = actor;
  });

  // Code below the API (the audited key manager) learns whom it works for, and on which vTPM.
  app.addHook('preHandler', (request, _reply, done) => {
    const principal = request.actor;
    if (!principal) return done();
    const vm = vmOf(request);
    const creating = CREATING_ROUTES.has(request.routeOptions.url ?? '') ? principal : undefined;
    const context = { principal, vm, secretsRead: new Set<string>(), requestId: request.id };
    if (!changesState(request.method)) {
      // A read changes nothing and is not audited: its project is needed only if it reads a secret, and then
      // it is looked up, so that a read asks the database for its vTPM once (the operation's read).
      let project: Promise<string | undefined> | undefined;
      const lazily = () => (project ??= requestAudit.projectOf(vm, creating));
      return requestContext.run({ ...context, project: lazily }, done);
    }
    // Looked up before the change: a delete's entry names the project of a vTPM that is gone once it is recorded.
    void requestAudit.projectOf(vm, creating).then((project) => {
      request.vtpmProject = project ?? null;
      const answer = { actor: principal, succeeded: () => requestEntry(request, successStatus(request), project) };
      request.auditAnswer = answer;
      requestContext.run({ ...context, project: async () => project, answer }, done);
    });
  });

  // Recorded before the answer leaves: nothing acknowledged goes unrecorded.
  app.addHook('onSend', async (request, reply, payload) => {
    // A throttled request is not recorded one by one: a flood must not grow the audit log without bound.
    if (!changesState(request.method) || request.failureCode === 'too_many_requests') return payload;
    // A create's vTPM exists only afterwards.
    const project = request.vtpmProject ?? (await requestAudit.projectOf(vmOf(request), undefined));
    const entry = requestEntry(request, reply.statusCode, project);
    // Committed with the operation's own last change: this very answer is in the log already.
    const committed = request.auditAnswer?.committed;
    if (committed && sameEntry(committed, entry)) return payload;
    await requestAudit.record(entry, request.actor);
    return payload;
  });

  registerVtpmRoutes(app, cp);
  registerVaultRoutes(app, cp);
  registerHostRoutes(app, cp);
  registerIdentityRoutes(app, cp);
  registerBackupRoutes(app, cp);
};
