/**
 * Users and their tokens, for admins: a user belongs to one project and
 * holds roles (policy.ts); a token is shown once, stored as a hash, and may
 * expire and be revoked.
 */
import type { Issued, TokenView, UserCreated, UserView } from '../api/identity.js';
import { InvalidArgumentError, NotFoundError } from '../errors.js';
import type { Store, TokenRecord, UserRecord } from '../store/index.js';
import { enforceOnDeployment, type Principal, ROLES } from './policy.js';
import { issueToken } from './tokens.js';

const userView = (user: UserRecord): UserView => ({
  name: user.name,
  project: user.project,
  roles: user.roles,
  created_at: user.created_at,
});
const tokenView = ({ user_name: user, ...token }: TokenRecord): TokenView => ({ ...token, user });
const expiryOf = (days: number | undefined) =>
  days === undefined ? null : new Date(Date.now() + days * 86_400_000).toISOString();

export interface NewUser {
  name: string;
  project: string;
  roles: string[];
  expiresInDays?: number | undefined;
}

export async function createUser(store: Store, request: NewUser, actor: Principal): Promise<UserCreated> {
  enforceOnDeployment(actor, 'users');
  const unknown = request.roles.find((role) => !(ROLES as readonly string[]).includes(role));
  if (unknown !== undefined) throw new InvalidArgumentError('roles', `roles from ${ROLES.join(', ')}`, unknown);
  const user = await store.identity.insertUser({ name: request.name, project: request.project, roles: request.roles });
  const { token, record } = await issueToken(store, user.name, expiryOf(request.expiresInDays));
  return { user: userView(user), token, token_id: record.id, expires_at: record.expires_at };
}

export async function listUsers(store: Store, actor: Principal): Promise<UserView[]> {
  enforceOnDeployment(actor, 'users');
  return (await store.identity.listUsers()).map(userView);
}

/** Its tokens stop working at once. */
export async function deleteUser(store: Store, name: string, actor: Principal): Promise<void> {
  enforceOnDeployment(actor, 'users');
  if (!(await store.identity.deleteUser(name))) throw new NotFoundError('user', name);
}

export async function issueUserToken(
  store: Store,
  name: string,
  expiresInDays: number | undefined,
  actor: Principal,
): Promise<Issued> {
  enforceOnDeployment(actor, 'users');
  if (!(await store.identity.getUser(name))) throw new NotFoundError('user', name);
  const { token, record } = await issueToken(store, name, expiryOf(expiresInDays));
  return { token, token_id: record.id, expires_at: record.expires_at };
}

export async function listTokens(store: Store, user: string | undefined, actor: Principal): Promise<TokenView[]> {
  enforceOnDeployment(actor, 'users');
  return (await store.identity.listTokens(user)).map(tokenView);
}

export async function revokeToken(store: Store, id: number, actor: Principal): Promise<void> {
  enforceOnDeployment(actor, 'users');
  if (!(await store.identity.revokeToken(id))) throw new NotFoundError('token (or already revoked)', String(id));
}
