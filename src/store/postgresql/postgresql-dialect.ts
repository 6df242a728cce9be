/**
 * The fleet's database: PostgreSQL through node-postgres, on one server or on
 * a primary and its standbys named in one connection string. Vault
 * generations live in it, so PostgreSQL's own replication protects them.
 */
import { type CompiledQuery, type DatabaseConnection, PostgresDialect, sql } from 'kysely';
import { DatabaseUnavailableError } from '../../errors.js';
import type { StoreDialect } from '../dialect.js';
import { describeTarget, parsePostgresUri } from './connection-string.js';
import { FailoverPool } from './failover-pool.js';

const UNIQUE_VIOLATION = '23505';

/**
 * SQLSTATE classes and codes after which the same request may succeed later: the connection broke, the server
 * is shutting down or starting, out of resources, read-only (a demoted or not yet promoted server), or the
 * transaction lost a serialisation race.
 */
const UNAVAILABLE_SQLSTATE = /^(08|53|57P0[1-3]|25006|40001|40P01)/;
const UNAVAILABLE_ERRNO = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND']);
const BROKEN_CONNECTION = /Connection terminated|connection ended|Client has encountered a connection error/i;

function typed(error: unknown): unknown {
  if (error instanceof DatabaseUnavailableError) return error;
  const code = (error as { code?: unknown } | null)?.code;
  const message = (error as Error | null)?.message ?? '';
  const unavailable =
    (typeof code === 'string' && (UNAVAILABLE_SQLSTATE.test(code) || UNAVAILABLE_ERRNO.has(code))) ||
    BROKEN_CONNECTION.test(message);
  if (!unavailable) return error;
  return new DatabaseUnavailableError(`the database cannot take this now: ${message}; try again`, {
    ...(typeof code === 'string' ? { code } : {}),
  });
}

/** Statement errors the caller may retry become DatabaseUnavailableError (503); others stay as the driver made them. */
async function typingErrors(connection: DatabaseConnection): Promise<void> {
  const execute = connection.executeQuery.bind(connection);
  connection.executeQuery = <R>(query: CompiledQuery) =>
    execute<R>(query).catch((error: unknown) => {
      throw typed(error);
    });
}

/** The first key of the service's advisory locks ("vtpm"), so that they cannot meet another program's. */
const LOCK_SPACE = 0x76_74_70_6d;

export function postgresqlDialect(uri: string): StoreDialect {
  const target = parsePostgresUri(uri);
  return {
    name: 'postgresql',
    kysely: new PostgresDialect({ pool: new FailoverPool(target), onCreateConnection: typingErrors }),
    isUniqueViolation: (error) => (error as { code?: unknown } | null)?.code === UNIQUE_VIOLATION,
    binaryType: 'bytea',
    addSerialKey: (table, column) =>
      table.addColumn(column, 'integer', (c) => c.primaryKey().generatedByDefaultAsIdentity()),
    forbidChanges: async (db, table, message) => {
      const refuse = `${table}_refuse_change`;
      await sql
        .raw(
          `CREATE FUNCTION ${refuse}() RETURNS trigger LANGUAGE plpgsql AS ` +
            `$$ BEGIN RAISE EXCEPTION '${message}'; END $$`,
        )
        .execute(db);
      await sql
        .raw(
          `CREATE TRIGGER ${table}_no_change BEFORE UPDATE OR DELETE ON ${table} ` +
            `FOR EACH ROW EXECUTE FUNCTION ${refuse}()`,
        )
        .execute(db);
    },
    lockUntilCommit: async (trx, name) => {
      await sql`SELECT pg_advisory_xact_lock(${LOCK_SPACE}, hashtext(${name}))`.execute(trx);
    },
    description: describeTarget(target),
  };
}
