/**
 * The vTPMs. Status changes are compare-and-set so that two replicas (or two
 * requests) can never both move the same vTPM.
 */
import type { Insertable, Kysely, Selectable, Updateable } from 'kysely';
import { AlreadyExistsError } from '../../errors.js';
import { now } from '../clock.js';
import type { StoreDialect } from '../dialect.js';
import { preparedQuery } from './prepared-query.js';
import type { Database, NewVtpm, VtpmPatch, VtpmRecord, VtpmStatus, VtpmTable } from '../schema.js';

function decodeVtpm(row: Selectable<VtpmTable>): VtpmRecord {
  return {
    vm: row.vm,
    project: row.project,
    version: row.version,
    model: row.model,
    host: row.host,
    status: row.status,
    firmware: row.firmware,
    secure_boot: row.secure_boot === 1,
    secret_ref: row.secret_ref,
    spec_claims: JSON.parse(row.spec_claims),
    ek_certificates: row.ek_certificates === null ? null : Buffer.from(row.ek_certificates),
    socket: row.socket,
    secret_security: row.secret_security,
    migrating_to: row.migrating_to,
    instance: row.instance,
    migrating_instance: row.migrating_instance,
    created_at: row.created_at,
    updated_at: row.updated_at,
  };
}

// 0 or 1 rather than a boolean column: the one encoding SQLite and PostgreSQL share.
const encodeSecureBoot = (secureBoot: boolean): number => (secureBoot ? 1 : 0);

// Named column by column, here and in the patch: a caller's wider object must not widen the statement.
function encodeVtpm(record: NewVtpm, timestamp: string): Insertable<VtpmTable> {
  return {
    vm: record.vm,
    project: record.project,
    version: record.version,
    model: record.model,
    host: record.host,
    status: record.status,
    firmware: record.firmware,
    secure_boot: encodeSecureBoot(record.secure_boot),
    secret_ref: record.secret_ref,
    spec_claims: JSON.stringify(record.spec_claims),
    ek_certificates: record.ek_certificates,
    socket: record.socket,
    secret_security: record.secret_security,
    migrating_to: record.migrating_to,
    instance: record.instance,
    migrating_instance: record.migrating_instance,
    created_at: timestamp,
    updated_at: timestamp,
  };
}

function encodeVtpmPatch(patch: VtpmPatch, timestamp: string): Updateable<VtpmTable> {
  return {
    ...(patch.status !== undefined && { status: patch.status }),
    ...(patch.ek_certificates !== undefined && { ek_certificates: patch.ek_certificates }),
    ...(patch.socket !== undefined && { socket: patch.socket }),
    ...(patch.secure_boot !== undefined && { secure_boot: encodeSecureBoot(patch.secure_boot) }),
    ...(patch.host !== undefined && { host: patch.host }),
    ...(patch.migrating_to !== undefined && { migrating_to: patch.migrating_to }),
    ...(patch.instance !== undefined && { instance: patch.instance }),
    ...(patch.migrating_instance !== undefined && { migrating_instance: patch.migrating_instance }),
    updated_at: timestamp,
  };
}

export class VtpmRepository {
  /** Every request on one vTPM reads it: prepared once (prepared-query.ts). */
  private readonly byVm;

  /** `db` may be a transaction: the provisioning pool inserts its vTPM inside its claim. */
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: StoreDialect,
  ) {
    this.byVm = preparedQuery(db, (vm: string) => db.selectFrom('vtpms').selectAll().where('vm', '=', vm));
  }

  async insert(record: NewVtpm): Promise<VtpmRecord> {
    const timestamp = now();
    const row = encodeVtpm(record, timestamp);
    try {
      await this.db.insertInto('vtpms').values(row).execute();
    } catch (error) {
      if (this.dialect.isUniqueViolation(error)) throw new AlreadyExistsError('vTPM for VM', record.vm);
      throw error;
    }
    return { ...record, created_at: timestamp, updated_at: timestamp };
  }

  async get(vm: string): Promise<VtpmRecord | undefined> {
    const [row] = await this.byVm(vm);
    return row && decodeVtpm(row);
  }

  async list(filter: { host?: string; statuses?: VtpmStatus[] } = {}): Promise<VtpmRecord[]> {
    // An empty IN list is an SQL syntax error on PostgreSQL (SQLite takes it); nothing is in no status.
    if (filter.statuses?.length === 0) return [];
    let query = this.db.selectFrom('vtpms').selectAll().orderBy('created_at').orderBy('vm');
    if (filter.host !== undefined) query = query.where('host', '=', filter.host);
    if (filter.statuses !== undefined) query = query.where('status', 'in', filter.statuses);
    return (await query.execute()).map(decodeVtpm);
  }

  /**
   * Applies the patch only if the vTPM is in one of `from` (when given).
   * Returns the updated record, or undefined if it was not in an expected state.
   */
  async update(vm: string, patch: VtpmPatch, from?: VtpmStatus[]): Promise<VtpmRecord | undefined> {
    if (from?.length === 0) return undefined;
    let query = this.db.updateTable('vtpms').set(encodeVtpmPatch(patch, now())).where('vm', '=', vm);
    if (from !== undefined) query = query.where('status', 'in', from);
    // The row as the update left it, from the update itself: no second read, no window for another writer.
    const row = await query.returningAll().executeTakeFirst();
    return row && decodeVtpm(row);
  }

  async delete(vm: string): Promise<void> {
    await this.db.deleteFrom('vtpms').where('vm', '=', vm).execute();
  }

  /** How many vTPMs each host has in each status (what the metrics report). */
  async countByHostAndStatus(): Promise<Array<{ host: string; status: VtpmStatus; count: number }>> {
    const rows = await this.db
      .selectFrom('vtpms')
      .select(['host', 'status', (eb) => eb.fn.countAll<number>().as('n')])
      .groupBy(['host', 'status'])
      .execute();
    // Number(): PostgreSQL's count is a bigint, which its driver hands out as a string.
    return rows.map((row) => ({ host: row.host, status: row.status as VtpmStatus, count: Number(row.n) }));
  }

  async countByHost(): Promise<Map<string, { total: number; running: number }>> {
    const rows = await this.db.selectFrom('vtpms').select(['host', 'status']).execute();
    const counts = new Map<string, { total: number; running: number }>();
    for (const row of rows) {
      const entry = counts.get(row.host) ?? { total: 0, running: 0 };
      entry.total += 1;
      if (row.status === 'running') entry.running += 1;
      counts.set(row.host, entry);
    }
    return counts;
  }
}
