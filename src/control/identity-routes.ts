/**
 * Running the deployment, under /v1: users, their tokens, the audit log, key
 * rotation. Users belong to one
 * project and hold roles (policy.ts); a token is shown once, stored as a
 * hash, and may expire and be revoked.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import type { Store, TokenRecord, UserRecord } from '../store/index.js';
import type { AuditLog } from '../audit/audit-log.js';
import type { AuditedKeyManager } from '../audit/audited-key-manager.js';
import { enforceOnDeployment, ROLES, seesAllProjects, type Principal } from '../auth/policy.js';
import { issueToken } from '../auth/tokens.js';

const NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$';
const MAX_TOKEN_DAYS = 3650;

const User = Type.Object({ name: Type.String(), project: Type.String(), roles: Type.Array(Type.String()), created_at: Type.String() });
const Token = Type.Object({ id: Type.Integer(), user: Type.String(), created_at: Type.String(), expires_at: Type.Union([Type.String(), Type.Null()]), revoked_at: Type.Union([Type.String(), Type.Null()]) });
const Issued = Type.Object({ token: Type.String({ description: 'shown once; only its hash is kept' }), token_id: Type.Integer(), expires_at: Type.Union([Type.String(), Type.Null()]) });
const Expiry = { expires_in_days: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: MAX_TOKEN_DAYS, description: 'the token stops working after this many days (fractions allowed); default: never' })) };
const CreateUserBody = Type.Object({
  name: Type.String({ pattern: NAME_PATTERN, description: 'letters, digits, . _ @ -' }),
  project: Type.String({ pattern: NAME_PATTERN }),
  roles: Type.Array(Type.String({ description: ROLES.join(', ') }), { minItems: 1, uniqueItems: true }),
  ...Expiry,
}, { additionalProperties: false });
const IssueBody = Type.Object({ ...Expiry }, { additionalProperties: false });
const NameParams = Type.Object({ name: Type.String() });
const IdParams = Type.Object({ id: Type.Integer() });
const Event = Type.Object({
  seq: Type.Integer(), at: Type.String(), actor: Type.String(), actor_project: Type.String(), operation: Type.String(),
  vm: Type.Union([Type.String(), Type.Null()]), project: Type.Union([Type.String(), Type.Null()]), result: Type.String(), detail: Type.Record(Type.String(), Type.Unknown()),
});
const EventsQuery = Type.Object({ vm: Type.Optional(Type.String()), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000, default: 100 })) });

const userView = (user: UserRecord) => ({ name: user.name, project: user.project, roles: user.roles, created_at: user.createdAt });
const tokenView = (token: TokenRecord) => ({ id: token.id, user: token.user, created_at: token.createdAt, expires_at: token.expiresAt, revoked_at: token.revokedAt });
const expiryOf = (days: number | undefined) => (days === undefined ? null : new Date(Date.now() + days * 86_400_000).toISOString());

export interface IdentityRouteContext {
  store: Store;
  keys: AuditedKeyManager;
  audit: AuditLog;
  actorOf: (request: FastifyRequest) => Principal;
  errors: (...statuses: number[]) => Record<number, TSchema>;
}

export function registerIdentityRoutes(app: FastifyInstance, { store, keys, audit, actorOf, errors }: IdentityRouteContext): void {
  app.post('/v1/keys/rotate', {
    schema: {
      summary: "A new key-encryption key in the key manager; every vTPM secret is re-wrapped under it (values unchanged), then the old key is destroyed",
      tags: ['keys'],
      response: { 200: Type.Object({ kind: Type.String(), rewrapped: Type.Integer(), already_rewrapped: Type.Integer() }), ...errors(401, 403, 500) },
    },
  }, async (request) => {
    enforceOnDeployment(actorOf(request), 'keys');
    return keys.rotate();
  });

  app.post<{ Body: Static<typeof CreateUserBody> }>('/v1/users', {
    schema: { summary: 'Create a user in a project with roles; returns its first token', tags: ['users'], body: CreateUserBody, response: { 201: Type.Object({ user: User, ...Issued.properties }), ...errors(400, 401, 403, 409) } },
  }, async (request, reply) => {
    enforceOnDeployment(actorOf(request), 'users');
    const { name, project, roles, expires_in_days: days } = request.body;
    const unknown = roles.find((role) => !(ROLES as readonly string[]).includes(role));
    if (unknown !== undefined) throw new InvalidArgumentError('roles', `roles from ${ROLES.join(', ')}`, unknown);
    const user = await store.insertUser({ name, project, roles });
    const { token, record } = await issueToken(store, user.name, expiryOf(days));
    return reply.status(201).send({ user: userView(user), token, token_id: record.id, expires_at: record.expiresAt });
  });

  app.get('/v1/users', {
    schema: { summary: 'Users', tags: ['users'], response: { 200: Type.Object({ users: Type.Array(User) }), ...errors(401, 403) } },
  }, async (request) => {
    enforceOnDeployment(actorOf(request), 'users');
    return { users: (await store.listUsers()).map(userView) };
  });

  app.delete<{ Params: Static<typeof NameParams> }>('/v1/users/:name', {
    schema: { summary: 'Delete a user; its tokens stop working at once', tags: ['users'], params: NameParams, response: { 204: Type.Null(), ...errors(401, 403, 404) } },
  }, async (request, reply) => {
    enforceOnDeployment(actorOf(request), 'users');
    if (!(await store.deleteUser(request.params.name))) throw new NotFoundError('user', request.params.name);
    return reply.status(204).send();
  });

  app.post<{ Params: Static<typeof NameParams>; Body: Static<typeof IssueBody> }>('/v1/users/:name/tokens', {
    schema: { summary: 'Issue another token for a user', tags: ['users'], params: NameParams, body: IssueBody, response: { 201: Issued, ...errors(400, 401, 403, 404) } },
  }, async (request, reply) => {
    enforceOnDeployment(actorOf(request), 'users');
    if (!(await store.getUser(request.params.name))) throw new NotFoundError('user', request.params.name);
    const { token, record } = await issueToken(store, request.params.name, expiryOf(request.body?.expires_in_days));
    return reply.status(201).send({ token, token_id: record.id, expires_at: record.expiresAt });
  });

  app.get<{ Querystring: { user?: string } }>('/v1/tokens', {
    schema: { summary: 'Tokens (never their values)', tags: ['users'], querystring: Type.Object({ user: Type.Optional(Type.String()) }), response: { 200: Type.Object({ tokens: Type.Array(Token) }), ...errors(401, 403) } },
  }, async (request) => {
    enforceOnDeployment(actorOf(request), 'users');
    return { tokens: (await store.listTokens(request.query.user)).map(tokenView) };
  });

  app.delete<{ Params: Static<typeof IdParams> }>('/v1/tokens/:id', {
    schema: { summary: 'Revoke a token', tags: ['users'], params: IdParams, response: { 204: Type.Null(), ...errors(401, 403, 404) } },
  }, async (request, reply) => {
    enforceOnDeployment(actorOf(request), 'users');
    if (!(await store.revokeToken(request.params.id))) throw new NotFoundError('token (or already revoked)', String(request.params.id));
    return reply.status(204).send();
  });

  app.get<{ Querystring: Static<typeof EventsQuery> }>('/v1/events', {
    schema: { summary: "Audit events, newest first: an admin sees all, others their project's", tags: ['audit'], querystring: EventsQuery, response: { 200: Type.Object({ events: Type.Array(Event) }), ...errors(401) } },
  }, async (request) => {
    const actor = actorOf(request);
    enforceOnDeployment(actor, 'audit-read');
    return { events: await audit.list({ vm: request.query.vm, project: seesAllProjects(actor) ? undefined : actor.project, limit: request.query.limit ?? 100 }) };
  });

  app.get('/v1/audit/verify', {
    schema: {
      summary: 'Check the audit log\'s hash chain from its first entry',
      tags: ['audit'],
      response: { 200: Type.Object({ ok: Type.Boolean(), events: Type.Integer(), broken_at: Type.Optional(Type.Integer()), reason: Type.Optional(Type.String()) }), ...errors(401, 403) },
    },
  }, async (request) => {
    enforceOnDeployment(actorOf(request), 'audit-verify');
    return audit.verify();
  });
}
