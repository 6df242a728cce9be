/** The embedded database: one SQLite file in the data directory, in WAL mode, each statement prepared once. */
import Sqlite from 'better-sqlite3';
import { type CompiledQuery, type DatabaseConnection, type Driver, SqliteDialect, sql } from 'kysely';
import { DatabaseUnavailableError } from '../../errors.js';
import type { StoreDialect } from '../dialect.js';
import { StatementCache } from './statement-cache.js';

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

/**
 * Gives the one connection kysely's SQLite driver makes typed errors. Its statements run synchronously, so
 * their errors are thrown, not rejected; wrapping without another promise keeps the hot path short.
 */
async function typingErrors(connection: DatabaseConnection): Promise<void> {
  const execute = connection.executeQuery.bind(connection);
  connection.executeQuery = <R>(query: CompiledQuery) => {
    try {
      return execute<R>(query);
    } catch (error) {
      throw typed(error);
    }
  };
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
        return new StatementCache(db);
      },
      onCreateConnection: typingErrors,
    }),
    isUniqueViolation: (error) => UNIQUE_VIOLATIONS.has((error as { code?: unknown } | null)?.code as string),
    binaryType: 'blob',
    addSerialKey: (table, column) => table.addColumn(column, 'integer', (c) => c.primaryKey().autoIncrement()),
    forbidChanges: async (db, table, message) => {
      for (const statement of ['UPDATE', 'DELETE']) {
        await sql
          .raw(
            `CREATE TRIGGER ${table}_no_${statement.toLowerCase()} BEFORE ${statement} ON ${table} ` +
              `BEGIN SELECT RAISE(ABORT, '${message}'); END`,
          )
          .execute(db);
      }
    },
    // SQLite has one writer at a time, and kysely's driver one connection: transactions already take turns.
    lockUntilCommit: async () => {},
    description: `SQLite database ${path}`,
  };
}
