/**
 * What differs between the databases the store runs on. Kysely's own dialect
 * already separates driver, query compiler, adapter and introspector; this adds
 * only what the repositories need to know beyond that, so a repository never
 * names a database.
 */
import type { Dialect } from 'kysely';

export interface StoreDialect {
  readonly name: string;
  readonly kysely: Dialect;
  /** Whether the driver's error is a primary-key or unique-constraint violation (each driver has its own codes). */
  isUniqueViolation(error: unknown): boolean;
}
