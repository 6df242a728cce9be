import { chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { sqliteDialect } from './sqlite/sqlite-dialect.js';
import { Store } from './store.js';

/** Opens the embedded SQLite store in the data directory. */
export async function openEmbeddedStore(dataDir: string): Promise<Store> {
  const path = join(dataDir, 'vtpm.sqlite');
  const store = await Store.open(sqliteDialect(path));
  await chmod(path, 0o600);
  return store;
}

export { Store } from './store.js';
export { DEPLOYMENT_PROJECT, SECRET_SETTINGS, type SecretUse } from './repositories/secrets.js';
export type {
  AuditEvent,
  AuditRow,
  GenerationReason,
  GenerationSummary,
  NewGeneration,
  NewVtpm,
  PoolEntry,
  StateKind,
  TokenRecord,
  UserRecord,
  VtpmRecord,
} from './schema.js';
