/** The embedded database: one SQLite file in the data directory, in WAL mode. */
import Sqlite from 'better-sqlite3';
import { type CompiledQuery, type DatabaseConnection, type Driver, SqliteDialect } from 'kysely';
import { DatabaseUnavailableError } from '../../errors.js';
import type { StoreDialect } from '../dialect.js';

/** better-sqlite3's extended result codes for a duplicate key. */
const UNIQUE_VIOLATIONS = new Set(['SQLITE_CONSTRAINT_PRIMARYKEY', 'SQLITE_CONSTRAINT_UNIQUE']);

/**
 * SQLite rolls a transaction back by itself when a statement in it fails with SQLITE_BUSY or SQLITE_FULL;
 * kysely's own rollback then fails with "no transaction is active", and that error would replace the one an
 * operator needs to see (the disk is full, the database is locked).
 */
class SqliteDialectKeepingErrors extends SqliteDialect {
  override createDriver(): Driver {
    const driver = super.createDriver();
    const acquire = driver.acquireConnection.bind(driver);
    // kysely's SQLite driver hands out one connection again and again: it is wrapped once.
    const wrapped = new WeakSet<DatabaseConnection>();
    driver.acquireConnection = async () => {
      const connection = await acquire();
      if (wrapped.has(connection)) return connection;
      const execute = connection.executeQuery.bind(connection);
      connection.executeQuery = async <R>(query: CompiledQuery) => {
        try {
          return await execute<R>(query);
        } catch (error) {
          throw typed(error);
        }
      };
      wrapped.add(connection);
      return connection;
    };
    const rollback = driver.rollbackTransaction.bind(driver);
    driver.rollbackTransaction = async (connection) => {
      try {
        await rollback(connection);
      } catch (error) {
        if (!/no transaction is active/.test((error as Error).message)) throw error;
      }
    };
    return driver;
  }
}

/** Locked past the busy timeout, or no room: the request may succeed later, and says so (503). */
const UNAVAILABLE = /^SQLITE_(BUSY|LOCKED|FULL|IOERR)/;

function typed(error: unknown): unknown {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || !UNAVAILABLE.test(code)) return error;
  const reason = code.startsWith('SQLITE_FULL')
    ? 'its disk is full'
    : code.startsWith('SQLITE_IOERR')
      ? 'its disk failed'
      : 'it is locked by another process';
  return new DatabaseUnavailableError(`the database cannot take this now: ${reason} (${code}); try again`, { code });
}

export function sqliteDialect(path: string, options: { busyTimeoutMs?: number } = {}): StoreDialect {
  return {
    name: 'sqlite',
    kysely: new SqliteDialectKeepingErrors({
      database: async () => {
        const db = new Sqlite(path);
        db.pragma('journal_mode = WAL');
        // FULL: an acknowledged write survives power loss, which is the product's promise.
        db.pragma('synchronous = FULL');
        db.pragma('foreign_keys = ON');
        db.pragma(`busy_timeout = ${options.busyTimeoutMs ?? 5000}`);
        return db;
      },
    }),
    isUniqueViolation: (error) => UNIQUE_VIOLATIONS.has((error as { code?: unknown } | null)?.code as string),
  };
}
