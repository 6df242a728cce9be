/** The wire shapes of running the deployment, under /v1: users, tokens, the audit log, key rotation. */
import { type Static, Type } from '@sinclair/typebox';
import { ROLES } from '../auth/policy.js';

const NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$';
const MAX_TOKEN_DAYS = 3650;

const User = Type.Object({
  name: Type.String(),
  project: Type.String(),
  roles: Type.Array(Type.String()),
  created_at: Type.String(),
});
export type UserView = Static<typeof User>;
export const UserList = Type.Object({ users: Type.Array(User) });

const Token = Type.Object({
  id: Type.Integer(),
  user: Type.String(),
  created_at: Type.String(),
  expires_at: Type.Union([Type.String(), Type.Null()]),
  revoked_at: Type.Union([Type.String(), Type.Null()]),
});
export type TokenView = Static<typeof Token>;
export const TokenList = Type.Object({ tokens: Type.Array(Token) });

export const Issued = Type.Object({
  token: Type.String({ description: 'shown once; only its hash is kept' }),
  token_id: Type.Integer(),
  expires_at: Type.Union([Type.String(), Type.Null()]),
});
export type Issued = Static<typeof Issued>;
export const UserCreated = Type.Object({ user: User, ...Issued.properties });
export type UserCreated = Static<typeof UserCreated>;

const expiry = {
  expires_in_days: Type.Optional(
    Type.Number({
      exclusiveMinimum: 0,
      maximum: MAX_TOKEN_DAYS,
      description: 'the token stops working after this many days (fractions allowed); default: never',
    }),
  ),
};
export const CreateUserBody = Type.Object(
  {
    name: Type.String({ pattern: NAME_PATTERN, description: 'letters, digits, . _ @ -' }),
    project: Type.String({ pattern: NAME_PATTERN }),
    roles: Type.Array(Type.String({ description: ROLES.join(', ') }), { minItems: 1, uniqueItems: true }),
    ...expiry,
  },
  { additionalProperties: false },
);
export const IssueBody = Type.Object({ ...expiry }, { additionalProperties: false });
export const NameParams = Type.Object({ name: Type.String() });
export const IdParams = Type.Object({ id: Type.Integer() });
export const TokensQuery = Type.Object({ user: Type.Optional(Type.String()) });

const AuditEvent = Type.Object({
  seq: Type.Integer(),
  at: Type.String(),
  actor: Type.String(),
  actor_project: Type.String(),
  operation: Type.String(),
  vm: Type.Union([Type.String(), Type.Null()]),
  project: Type.Union([Type.String(), Type.Null()]),
  result: Type.String(),
  detail: Type.Record(Type.String(), Type.Unknown()),
});
export type AuditView = Static<typeof AuditEvent>;
export const AuditEventList = Type.Object({ events: Type.Array(AuditEvent) });
export const EventsQuery = Type.Object({
  vm: Type.Optional(Type.String()),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000, default: 100 })),
});

export const AuditVerification = Type.Object({
  ok: Type.Boolean(),
  events: Type.Integer(),
  broken_at: Type.Optional(Type.Integer({ description: 'the first entry whose content or link does not check out' })),
  reason: Type.Optional(Type.String()),
});
export type AuditVerification = Static<typeof AuditVerification>;

export const RotationReport = Type.Object({
  kind: Type.String(),
  rewrapped: Type.Integer(),
  already_rewrapped: Type.Integer(),
});
