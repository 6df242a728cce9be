/** /v1: users, their tokens, the audit log, key rotation. */
import type { Static } from '@sinclair/typebox';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { errorResponses as errors } from '../../api/errors.js';
import {
  AuditEventList,
  AuditVerification,
  CreateUserBody,
  EventsQuery,
  IdParams,
  Issued,
  IssueBody,
  NameParams,
  RotationReport,
  TokenList,
  TokensQuery,
  UserCreated,
  UserList,
} from '../../api/identity.js';
import { listEvents, verifyAudit } from '../../audit/events.js';
import { createUser, deleteUser, issueUserToken, listTokens, listUsers, revokeToken } from '../../auth/users.js';
import type { ControlPlane } from '../../orchestration/control-plane.js';
import { rotateKeys } from '../../orchestration/rotate-keys.js';
import { actorOf } from './plugin.js';

export function registerIdentityRoutes(app: FastifyInstance, cp: ControlPlane): void {
  const { store, audit } = cp;

  app.post(
    '/keys/rotate',
    {
      schema: {
        summary:
          'A new key-encryption key in the key manager; every vTPM secret is re-wrapped under it ' +
          '(values unchanged), then the old key is destroyed',
        tags: ['keys'],
        response: { 200: RotationReport, ...errors(401, 403, 500) },
      },
    },
    async (request) => rotateKeys(cp, actorOf(request)),
  );

  app.post<{ Body: Static<typeof CreateUserBody> }>(
    '/users',
    {
      schema: {
        summary: 'Create a user in a project with roles; returns its first token',
        tags: ['users'],
        body: CreateUserBody,
        response: { 201: UserCreated, ...errors(400, 401, 403, 409) },
      },
    },
    async (request, reply) => {
      const { name, project, roles, expires_in_days: expiresInDays } = request.body;
      const created = await createUser(store, { name, project, roles, expiresInDays }, actorOf(request));
      return reply.status(201).send(created);
    },
  );

  app.get(
    '/users',
    { schema: { summary: 'Users', tags: ['users'], response: { 200: UserList, ...errors(401, 403) } } },
    async (request) => ({ users: await listUsers(store, actorOf(request)) }),
  );

  app.delete<{ Params: Static<typeof NameParams> }>(
    '/users/:name',
    {
      schema: {
        summary: 'Delete a user; its tokens stop working at once',
        tags: ['users'],
        params: NameParams,
        response: { 204: Type.Null(), ...errors(401, 403, 404) },
      },
    },
    async (request, reply) => {
      await deleteUser(store, request.params.name, actorOf(request));
      return reply.status(204).send();
    },
  );

  app.post<{ Params: Static<typeof NameParams>; Body: Static<typeof IssueBody> }>(
    '/users/:name/tokens',
    {
      schema: {
        summary: 'Issue another token for a user',
        tags: ['users'],
        params: NameParams,
        body: IssueBody,
        response: { 201: Issued, ...errors(400, 401, 403, 404) },
      },
    },
    async (request, reply) => {
      const days = request.body?.expires_in_days;
      return reply.status(201).send(await issueUserToken(store, request.params.name, days, actorOf(request)));
    },
  );

  app.get<{ Querystring: Static<typeof TokensQuery> }>(
    '/tokens',
    {
      schema: {
        summary: 'Tokens (never their values)',
        tags: ['users'],
        querystring: TokensQuery,
        response: { 200: TokenList, ...errors(401, 403) },
      },
    },
    async (request) => ({ tokens: await listTokens(store, request.query.user, actorOf(request)) }),
  );

  app.delete<{ Params: Static<typeof IdParams> }>(
    '/tokens/:id',
    {
      schema: {
        summary: 'Revoke a token',
        tags: ['users'],
        params: IdParams,
        response: { 204: Type.Null(), ...errors(401, 403, 404) },
      },
    },
    async (request, reply) => {
      await revokeToken(store, request.params.id, actorOf(request));
      return reply.status(204).send();
    },
  );

  app.get<{ Querystring: Static<typeof EventsQuery> }>(
    '/events',
    {
      schema: {
        summary: "Audit events, newest first: an admin sees all, others their project's",
        tags: ['audit'],
        querystring: EventsQuery,
        response: { 200: AuditEventList, ...errors(401) },
      },
    },
    async (request) => {
      const filter = { vm: request.query.vm, limit: request.query.limit ?? 100 };
      return { events: await listEvents(audit, filter, actorOf(request)) };
    },
  );

  app.get(
    '/audit/verify',
    {
      schema: {
        summary: "Check the audit log's hash chain from its first entry",
        tags: ['audit'],
        response: { 200: AuditVerification, ...errors(401, 403) },
      },
    },
    async (request) => verifyAudit(audit, actorOf(request)),
  );
}
