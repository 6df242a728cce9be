/**
 * better-sqlite3's database as kysely's SQLite driver sees it, with each
 * statement prepared once: the driver prepares every query it runs, and
 * preparing costs more than running the indexed reads of the API's hot path.
 */
import type Sqlite from 'better-sqlite3';
import type { SqliteDatabase } from 'kysely';

/** More than the distinct statements the repositories issue, so that a steady workload prepares nothing. */
const DEFAULT_CAPACITY = 256;

/** A statement that changes the schema: the statements prepared before it may name what it dropped. */
const SCHEMA_CHANGE = /^\s*(create|alter|drop)\b/i;

export class StatementCache implements SqliteDatabase {
  /** In order of last use, least recent first (a Map iterates in insertion order). */
  private readonly statements = new Map<string, Sqlite.Statement>();

  constructor(
    private readonly db: Sqlite.Database,
    private readonly capacity = DEFAULT_CAPACITY,
  ) {}

  get size(): number {
    return this.statements.size;
  }

  prepare(sql: string): Sqlite.Statement {
    const cached = this.statements.get(sql);
    if (cached) {
      this.statements.delete(sql);
      this.statements.set(sql, cached);
      return cached;
    }
    // SQLite re-prepares a cached statement whose tables changed by itself; what a migration dropped goes here.
    if (SCHEMA_CHANGE.test(sql)) {
      this.statements.clear();
      return this.db.prepare(sql);
    }
    const statement = this.db.prepare(sql);
    this.statements.set(sql, statement);
    if (this.statements.size > this.capacity) {
      this.statements.delete(this.statements.keys().next().value as string);
    }
    return statement;
  }

  close(): void {
    this.statements.clear();
    this.db.close();
  }
}
