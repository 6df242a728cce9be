/** The embedded database: one SQLite file in the data directory, in WAL mode. */
import Sqlite from 'better-sqlite3';
import { type Driver, SqliteDialect } from 'kysely';
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

export function sqliteDialect(path: string): StoreDialect {
  return {
    name: 'sqlite',
    kysely: new SqliteDialectKeepingErrors({
      database: async () => {
        const db = new Sqlite(path);
        db.pragma('journal_mode = WAL');
        // FULL: an acknowledged write survives power loss, which is the product's promise.
        db.pragma('synchronous = FULL');
        db.pragma('foreign_keys = ON');
        db.pragma('busy_timeout = 5000');
        return db;
      },
    }),
    isUniqueViolation: (error) => UNIQUE_VIOLATIONS.has((error as { code?: unknown } | null)?.code as string),
  };
}
