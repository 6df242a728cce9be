/**
 * A connection pool over the servers of a multi-host connection string, with
 * libpq's `target_session_attrs` meaning: connections go to the first server,
 * in the order given, that answers and (for read-write and primary) is not a
 * standby. When the primary dies and a standby is promoted, the next
 * connection that fails or lands on a standby moves the pool on to the next
 * server, so the service finds the new primary without a restart. Statements
 * in flight on the dead server fail with DatabaseUnavailableError (503) and
 * the caller may try again; nothing acknowledged is lost, as PostgreSQL's
 * synchronous replication acknowledges a commit only once the standby has it.
 */
import type { PostgresPool, PostgresPoolClient } from 'kysely';
import pg from 'pg';
import { DatabaseUnavailableError } from '../../errors.js';
import { describeTarget, type PostgresTarget, type ServerAddress } from './connection-string.js';

/** Connections a pool keeps open to its server: the service's requests are short, and serialised per vTPM. */
const POOL_SIZE = 10;

/** A connection's first statement when the target wants a primary: libpq asks the same. */
const IS_STANDBY = 'SELECT pg_is_in_recovery() AS standby';

export class FailoverPool implements PostgresPool {
  private pool: pg.Pool | undefined;
  /** Which server the pool is on: an index into the target's servers. */
  private current = 0;
  /** Connections already checked against the target's session attributes (the pool hands the same ones out again). */
  private readonly checked = new WeakSet<pg.PoolClient>();
  private ended = false;

  constructor(private readonly target: PostgresTarget) {}

  async connect(): Promise<PostgresPoolClient> {
    const failures: string[] = [];
    for (let tried = 0; tried < this.target.servers.length; tried += 1) {
      const pool = this.poolOnCurrentServer();
      const server = this.target.servers[this.current] as ServerAddress;
      try {
        const client = await pool.connect();
        if (await this.suits(client)) return client;
        client.release(true);
        failures.push(`${address(server)} is a standby`);
      } catch (error) {
        failures.push(`${address(server)}: ${(error as Error).message}`);
      }
      this.moveOnFrom(pool);
    }
    throw new DatabaseUnavailableError(
      `no server of ${describeTarget(this.target)} takes connections` +
        `${this.target.targetSessionAttrs === 'any' ? '' : ' that can write'} now (${failures.join('; ')}); try again`,
      { servers: this.target.servers.map(address) },
    );
  }

  async end(): Promise<void> {
    this.ended = true;
    await this.pool?.end();
  }

  private poolOnCurrentServer(): pg.Pool {
    if (this.ended) throw new DatabaseUnavailableError('the database connection is closed');
    if (this.pool) return this.pool;
    const server = this.target.servers[this.current] as ServerAddress;
    const pool = new pg.Pool({
      host: server.host,
      port: server.port,
      database: this.target.database,
      user: this.target.user,
      password: this.target.password,
      application_name: this.target.applicationName,
      ssl: this.target.ssl === 'disable' ? false : { rejectUnauthorized: this.target.ssl === 'verify-full' },
      connectionTimeoutMillis: this.target.connectTimeoutSeconds * 1000,
      keepAlive: true,
      max: POOL_SIZE,
    });
    // A connection that breaks while idle is dropped by the pool; without a listener, its error would end the process.
    pool.on('error', () => {});
    // The same for one that breaks while checked out between statements: its next statement fails instead.
    pool.on('connect', (client) => client.on('error', () => {}));
    this.pool = pool;
    return pool;
  }

  /** Whether a connection meets the target's session attributes; checked once per connection. */
  private async suits(client: pg.PoolClient): Promise<boolean> {
    if (this.target.targetSessionAttrs === 'any' || this.checked.has(client)) return true;
    const { rows } = await client.query<{ standby: boolean }>(IS_STANDBY);
    if (rows[0]?.standby) return false;
    this.checked.add(client);
    return true;
  }

  /** The next server in order; concurrent callers that saw the same pool fail move it on once. */
  private moveOnFrom(pool: pg.Pool): void {
    if (this.pool !== pool) return;
    this.pool = undefined;
    this.current = (this.current + 1) % this.target.servers.length;
    // Connections still checked out end as their statements finish or fail; nothing waits for them here.
    pool.end().catch(() => {});
  }
}

const address = (server: ServerAddress) =>
  server.host.startsWith('/') ? server.host : `${server.host}:${server.port}`;
