/** The provisioning pool's entries: TPMs manufactured ahead of demand (src/pool). */
import type { Kysely, Selectable } from 'kysely';
import { now } from '../clock.js';
import type { StoreDialect } from '../dialect.js';
import type { Database, NewVtpm, PoolEntry, PoolEntryTable } from '../schema.js';
import { VtpmRepository } from './vtpms.js';
import { atomically } from './atomically.js';

const decodePoolEntry = (row: Selectable<PoolEntryTable>): PoolEntry => ({
  id: row.id,
  version: row.version,
  secret_ref: row.secret_ref,
  state: Buffer.from(row.state),
  ek_certificates: Buffer.from(row.ek_certificates),
});

export class PoolRepository {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: StoreDialect,
  ) {}

  async add(entry: PoolEntry): Promise<void> {
    await this.db
      .insertInto('pool_entries')
      .values({
        id: entry.id,
        version: entry.version,
        secret_ref: entry.secret_ref,
        state: entry.state,
        ek_certificates: entry.ek_certificates,
        created_at: now(),
      })
      .execute();
  }

  async count(version: string): Promise<number> {
    const row = await this.db
      .selectFrom('pool_entries')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('version', '=', version)
      .executeTakeFirst();
    // Number(): PostgreSQL's count is a bigint, which its driver hands out as a string.
    return Number(row?.n ?? 0);
  }

  /**
   * Takes the oldest entry of a version and inserts the vTPM that will own its
   * secret, in one transaction: a crash leaves either the entry or a `creating`
   * vTPM that reconcile() rolls back, never an orphaned secret. A vTPM that
   * cannot be inserted (AlreadyExistsError) leaves the entry in the pool.
   */
  async claim(version: string, vtpm: (entry: PoolEntry) => NewVtpm): Promise<PoolEntry | undefined> {
    return atomically(this.db, async (trx) => {
      const row = await trx
        .selectFrom('pool_entries')
        .selectAll()
        .where('version', '=', version)
        .orderBy('created_at')
        .limit(1)
        .executeTakeFirst();
      if (!row) return undefined;
      const deleted = await trx.deleteFrom('pool_entries').where('id', '=', row.id).executeTakeFirst();
      // Another replica claimed it between our select and delete.
      if (Number(deleted.numDeletedRows) !== 1) return undefined;
      const entry = decodePoolEntry(row);
      await new VtpmRepository(trx, this.dialect).insert(vtpm(entry));
      return entry;
    });
  }
}
