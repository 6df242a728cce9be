/**
 * API tokens: random, shown once, stored only as SHA-256. The admin token of
 * a single-machine deployment is also written to <data-dir>/admin.token
 * (0600) so that the CLI on that machine finds it without configuration.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Store } from '../store/index.js';
import type { Actor } from './vtpm-service.js';

const TOKEN_PREFIX = 'vtpm_';
const ADMIN_TOKEN_NAME = 'bootstrap-admin';

const hashToken = (token: string): string => createHash('sha256').update(token).digest('hex');
export const adminTokenPath = (dataDir: string): string => join(dataDir, 'admin.token');

function newToken(): string {
  return TOKEN_PREFIX + randomBytes(32).toString('base64url');
}

/** Returns the admin token file's path, and whether it was created now. */
export async function ensureAdminToken(store: Store, dataDir: string): Promise<{ path: string; created: boolean }> {
  const path = adminTokenPath(dataDir);
  const existing = await readFile(path, 'utf8').then((t) => t.trim(), () => undefined);
  if (existing && (await store.findTokenByHash(hashToken(existing)))) return { path, created: false };
  // The file is missing or does not match: issue a fresh admin token and retire the old one.
  const token = newToken();
  await store.deleteTokensNamed(ADMIN_TOKEN_NAME);
  await store.insertToken({ name: ADMIN_TOKEN_NAME, project: 'admin', role: 'admin', tokenHash: hashToken(token) });
  const temporary = `${path}.tmp-${process.pid}`;
  await writeFile(temporary, token + '\n', { mode: 0o600 });
  await rename(temporary, path);
  return { path, created: true };
}

export async function authenticate(store: Store, token: string): Promise<Actor | undefined> {
  return store.findTokenByHash(hashToken(token));
}
