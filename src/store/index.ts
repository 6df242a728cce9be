import { constants } from 'node:fs';
import { chmod, open } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { isPostgresUri } from './postgresql/connection-string.js';
import { postgresqlDialect } from './postgresql/postgresql-dialect.js';
import { sqliteDialect } from './sqlite/sqlite-dialect.js';
import { Store } from './store.js';

/**
 * The store `vtpm serve --db` names: a PostgreSQL connection string, or (by
 * default) the embedded SQLite file in the data directory.
 */
export async function openStore(
  dataDir: string,
  database: string | undefined,
  onMigration?: (migration: string) => void,
): Promise<Store> {
  if (database === undefined) return openEmbeddedStore(dataDir, onMigration);
  if (!isPostgresUri(database))
    throw new InvalidArgumentError('--db', 'a postgresql:// connection string (leave it out for embedded SQLite)');
  return Store.open(postgresqlDialect(database), onMigration);
}

/**
 * Opens the embedded SQLite store in the data directory. SQLite gives its
 * `-wal` and `-shm` files the database file's mode, so the file is made 0600
 * before SQLite first opens it; the journal files of a database made by an
 * earlier version, which may be wider, are narrowed too.
 */
export async function openEmbeddedStore(dataDir: string, onMigration?: (migration: string) => void): Promise<Store> {
  const path = embeddedDatabase(dataDir);
  await (await open(path, constants.O_RDWR | constants.O_CREAT, 0o600)).close();
  for (const file of [path, `${path}-wal`, `${path}-shm`]) await narrow(file);
  return Store.open(sqliteDialect(path), onMigration);
}

/** The embedded database's file in a data directory. */
export const embeddedDatabase = (dataDir: string) => join(dataDir, 'vtpm.sqlite');

async function narrow(path: string): Promise<void> {
  try {
    await chmod(path, 0o600);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}

export { Store } from './store.js';
export { requireKnownSchema } from './migrations.js';
export { STATE_KINDS } from './schema.js';
export { DEPLOYMENT_PROJECT, SECRET_SETTINGS, type SecretUse } from './repositories/secrets.js';
export type {
  AuditEvent,
  AuditRow,
  GenerationReason,
  GenerationRecord,
  GenerationSummary,
  NewGeneration,
  NewVtpm,
  PoolEntry,
  StateKind,
  TokenRecord,
  UserRecord,
  VtpmRecord,
} from './schema.js';
