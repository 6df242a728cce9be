/** The embedded database: one SQLite file in the data directory, in WAL mode. */
import Sqlite from 'better-sqlite3';
import { SqliteDialect } from 'kysely';
import type { StoreDialect } from '../dialect.js';

/** better-sqlite3's extended result codes for a duplicate key. */
const UNIQUE_VIOLATIONS = new Set(['SQLITE_CONSTRAINT_PRIMARYKEY', 'SQLITE_CONSTRAINT_UNIQUE']);

export function sqliteDialect(path: string): StoreDialect {
  return {
    name: 'sqlite',
    kysely: new SqliteDialect({
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
