/** The embedded database: one SQLite file in the data directory, in WAL mode. */
import Sqlite from 'better-sqlite3';
import { SqliteDialect } from 'kysely';

export function sqliteDialect(path: string): SqliteDialect {
  return new SqliteDialect({
    database: async () => {
      const db = new Sqlite(path);
      db.pragma('journal_mode = WAL');
      // FULL: an acknowledged write survives power loss, which is the product's promise.
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      db.pragma('busy_timeout = 5000');
      return db;
    },
  });
}
