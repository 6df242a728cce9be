/**
 * What differs between the databases the store runs on. Kysely's own dialect
 * already separates driver, query compiler, adapter and introspector; this adds
 * only what the migrations and repositories need to know beyond that, so that
 * neither ever names a database.
 */
import type { ColumnDataType, CreateTableBuilder, Dialect, Kysely, Transaction } from 'kysely';
import type { Database } from './schema.js';

export interface StoreDialect {
  readonly name: 'sqlite' | 'postgresql';
  readonly kysely: Dialect;
  /** Whether the driver's error is a primary-key or unique-constraint violation (each driver has its own codes). */
  isUniqueViolation(error: unknown): boolean;
  /** The column type of byte strings. */
  readonly binaryType: ColumnDataType;
  /** Adds an integer primary key that the database numbers itself, in insertion order. */
  addSerialKey(table: CreateTableBuilder<string, string>, column: string): CreateTableBuilder<string, string>;
  /** Makes the database itself refuse every UPDATE and DELETE of `table`, with `message`. */
  forbidChanges(db: Kysely<unknown>, table: string, message: string): Promise<void>;
  /**
   * Holds a lock named `name` until the transaction `trx` ends, so that transactions reading and then writing
   * the same thing (the audit chain's newest hash) take turns. A database with one writer at a time has
   * nothing to do.
   */
  lockUntilCommit(trx: Transaction<Database>, name: string): Promise<void>;
  /** Where the database is, for logs and errors: never its password. */
  readonly description: string;
}
