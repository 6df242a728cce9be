/**
 * API tokens: random, shown once, stored only as SHA-256. The admin token of
 * a single-machine deployment is also written to <data-dir>/admin.token
 * (0600) so that the CLI on that machine finds it without configuration.
 */
import { hash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { adminTokenPath } from './admin-token-path.js';
import { writeFileAtomically } from '../keys/files.js';
import { DEPLOYMENT_PROJECT, type Store, type TokenRecord } from '../store/index.js';
import type { Principal, Role } from './policy.js';

const TOKEN_PREFIX = 'vtpm_';
const ADMIN_USER = 'bootstrap-admin';

// The one-shot hash: every authenticated request hashes its token, and a Hash object costs more than the digest.
const hashToken = (token: string): string => hash('sha256', token, 'hex');

function newToken(): string {
  return TOKEN_PREFIX + randomBytes(32).toString('base64url');
}

/** Issues a token for the user; only its hash is kept. */
export async function issueToken(
  store: Store,
  user: string,
  expiresAt: string | null,
): Promise<{ token: string; record: TokenRecord }> {
  const token = newToken();
  const row = { user_name: user, token_hash: hashToken(token), expires_at: expiresAt };
  const record = await store.identity.insertToken(row);
  return { token, record };
}

/** Returns the admin token file's path, and whether it was created now. */
export async function ensureAdminToken(store: Store, dataDir: string): Promise<{ path: string; created: boolean }> {
  const path = adminTokenPath(dataDir);
  const existing = await readFile(path, 'utf8').then(
    (t) => t.trim(),
    () => undefined,
  );
  const holder = existing
    ? await store.identity.findUserByTokenHash(hashToken(existing), new Date().toISOString())
    : undefined;
  if (holder?.name === ADMIN_USER) return { path, created: false };
  // The file is missing or does not match: issue a fresh admin token and retire the old ones.
  if (!(await store.identity.getUser(ADMIN_USER))) {
    await store.identity.insertUser({ name: ADMIN_USER, project: DEPLOYMENT_PROJECT, roles: ['admin'] });
  }
  await store.identity.revokeTokensOf(ADMIN_USER);
  const { token } = await issueToken(store, ADMIN_USER, null);
  await writeFileAtomically(path, Buffer.from(`${token}\n`));
  return { path, created: true };
}

export async function authenticate(store: Store, token: string): Promise<Principal | undefined> {
  const user = await store.identity.findUserByTokenHash(hashToken(token), new Date().toISOString());
  return user && { name: user.name, project: user.project, roles: user.roles as Role[] };
}
