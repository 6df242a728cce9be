/**
 * The control plane's database. Every method is one statement or one
 * transaction, written against the dialect-neutral query builder; status
 * changes are compare-and-set so that two replicas (or two requests) can never
 * both move the same vTPM.
 */
import { type Dialect, type Insertable, Kysely, type Selectable } from 'kysely';
import { AlreadyExistsError } from '../errors.js';
import { migrateToLatest } from './migrations.js';
import type { Database, GenerationReason, HostTable, StateGenerationTable, StateKind, VtpmStatus, VtpmTable } from './schema.js';

export interface VtpmRecord {
  vm: string;
  project: string;
  version: string;
  model: string;
  host: string;
  status: VtpmStatus;
  firmware: string;
  secureBoot: boolean;
  secretRef: string;
  specClaims: unknown;
  ekCertificates: Buffer | null;
  socket: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface HostRecord {
  name: string;
  traits: string[];
  capabilities: unknown;
  lastSeen: string;
}

export interface GenerationRecord {
  vm: string;
  kind: StateKind;
  generation: number;
  previousDigest: string;
  digest: string;
  size: number;
  reason: GenerationReason;
  wrappedKey: Buffer;
  ciphertext: Buffer;
  createdAt: string;
}

export type GenerationSummary = Omit<GenerationRecord, 'wrappedKey' | 'ciphertext'>;

export interface StateHead {
  generation: number;
  digest: string;
}

export interface PoolEntry {
  id: string;
  version: string;
  secretRef: string;
  state: Buffer;
  ekCertificates: Buffer;
}

export type VtpmPatch = Partial<Pick<VtpmRecord, 'status' | 'ekCertificates' | 'socket' | 'secureBoot'>>;

const now = (): string => new Date().toISOString();

function toVtpm(row: Selectable<VtpmTable>): VtpmRecord {
  return {
    vm: row.vm,
    project: row.project,
    version: row.version,
    model: row.model,
    host: row.host,
    status: row.status,
    firmware: row.firmware,
    secureBoot: row.secure_boot === 1,
    secretRef: row.secret_ref,
    specClaims: JSON.parse(row.spec_claims),
    ekCertificates: row.ek_certificates === null ? null : Buffer.from(row.ek_certificates),
    socket: row.socket,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function toGenerationSummary(row: Omit<Selectable<StateGenerationTable>, 'wrapped_key' | 'ciphertext'>): GenerationSummary {
  return {
    vm: row.vm,
    kind: row.kind,
    generation: row.generation,
    previousDigest: row.previous_digest,
    digest: row.digest,
    size: row.size,
    reason: row.reason,
    createdAt: row.created_at,
  };
}

function toHost(row: Selectable<HostTable>): HostRecord {
  return { name: row.name, traits: JSON.parse(row.traits), capabilities: JSON.parse(row.capabilities), lastSeen: row.last_seen };
}

function vtpmRow(record: Omit<VtpmRecord, 'createdAt' | 'updatedAt'>, timestamp: string): Insertable<VtpmTable> {
  return {
    vm: record.vm,
    project: record.project,
    version: record.version,
    model: record.model,
    host: record.host,
    status: record.status,
    firmware: record.firmware,
    secure_boot: record.secureBoot ? 1 : 0,
    secret_ref: record.secretRef,
    spec_claims: JSON.stringify(record.specClaims),
    ek_certificates: record.ekCertificates,
    socket: record.socket,
    created_at: timestamp,
    updated_at: timestamp,
  };
}

function isUniqueViolation(error: unknown): boolean {
  const code = (error as { code?: string }).code ?? '';
  return code.startsWith('SQLITE_CONSTRAINT') || code === '23505';
}

export class Store {
  private constructor(private readonly db: Kysely<Database>) {}

  static async open(dialect: Dialect): Promise<Store> {
    const db = new Kysely<Database>({ dialect });
    await migrateToLatest(db as Kysely<unknown>);
    return new Store(db);
  }

  async close(): Promise<void> {
    await this.db.destroy();
  }

  async insertVtpm(record: Omit<VtpmRecord, 'createdAt' | 'updatedAt'>): Promise<VtpmRecord> {
    const timestamp = now();
    try {
      await this.db.insertInto('vtpms').values(vtpmRow(record, timestamp)).execute();
    } catch (error) {
      if (isUniqueViolation(error)) throw new AlreadyExistsError('vTPM for VM', record.vm);
      throw error;
    }
    return { ...record, createdAt: timestamp, updatedAt: timestamp };
  }

  async addPoolEntry(entry: PoolEntry): Promise<void> {
    await this.db
      .insertInto('pool_entries')
      .values({ id: entry.id, version: entry.version, secret_ref: entry.secretRef, state: entry.state, ek_certificates: entry.ekCertificates, created_at: now() })
      .execute();
  }

  async countPoolEntries(version: string): Promise<number> {
    const row = await this.db.selectFrom('pool_entries').select((eb) => eb.fn.countAll<number>().as('n')).where('version', '=', version).executeTakeFirst();
    return Number(row?.n ?? 0);
  }

  /**
   * Takes the oldest pool entry of a version and inserts the vTPM that will
   * own its secret, in one transaction: a crash leaves either the entry or
   * a `creating` vTPM that reconcile() rolls back, never an orphaned secret.
   */
  async claimPoolEntry(version: string, vtpm: (entry: PoolEntry) => Omit<VtpmRecord, 'createdAt' | 'updatedAt'>): Promise<PoolEntry | undefined> {
    return this.db.transaction().execute(async (trx) => {
      const row = await trx.selectFrom('pool_entries').selectAll().where('version', '=', version).orderBy('created_at').limit(1).executeTakeFirst();
      if (!row) return undefined;
      const deleted = await trx.deleteFrom('pool_entries').where('id', '=', row.id).executeTakeFirst();
      if (Number(deleted.numDeletedRows) !== 1) return undefined;
      const entry = { id: row.id, version: row.version, secretRef: row.secret_ref, state: Buffer.from(row.state), ekCertificates: Buffer.from(row.ek_certificates) };
      const record = vtpm(entry);
      const timestamp = now();
      try {
        await trx.insertInto('vtpms').values(vtpmRow(record, timestamp)).execute();
      } catch (error) {
        if (isUniqueViolation(error)) throw new AlreadyExistsError('vTPM for VM', record.vm);
        throw error;
      }
      return entry;
    });
  }

  async getVtpm(vm: string): Promise<VtpmRecord | undefined> {
    const row = await this.db.selectFrom('vtpms').selectAll().where('vm', '=', vm).executeTakeFirst();
    return row && toVtpm(row);
  }

  async listVtpms(filter: { host?: string; statuses?: VtpmStatus[] } = {}): Promise<VtpmRecord[]> {
    let query = this.db.selectFrom('vtpms').selectAll().orderBy('created_at').orderBy('vm');
    if (filter.host !== undefined) query = query.where('host', '=', filter.host);
    if (filter.statuses !== undefined) query = query.where('status', 'in', filter.statuses);
    return (await query.execute()).map(toVtpm);
  }

  /**
   * Applies the patch only if the vTPM is in one of `from` (when given).
   * Returns the updated record, or undefined if it was not in an expected state.
   */
  async updateVtpm(vm: string, patch: VtpmPatch, from?: VtpmStatus[]): Promise<VtpmRecord | undefined> {
    let query = this.db
      .updateTable('vtpms')
      .set({
        ...(patch.status !== undefined && { status: patch.status }),
        ...(patch.ekCertificates !== undefined && { ek_certificates: patch.ekCertificates }),
        ...(patch.socket !== undefined && { socket: patch.socket }),
        ...(patch.secureBoot !== undefined && { secure_boot: patch.secureBoot ? 1 : 0 }),
        updated_at: now(),
      })
      .where('vm', '=', vm);
    if (from !== undefined) query = query.where('status', 'in', from);
    const result = await query.executeTakeFirst();
    if (Number(result.numUpdatedRows) === 0) return undefined;
    return this.getVtpm(vm);
  }

  async deleteVtpm(vm: string): Promise<void> {
    await this.db.deleteFrom('vtpms').where('vm', '=', vm).execute();
  }

  async getHead(vm: string, kind: StateKind): Promise<StateHead | undefined> {
    return this.db.selectFrom('state_heads').select(['generation', 'digest']).where('vm', '=', vm).where('kind', '=', kind).executeTakeFirst();
  }

  /**
   * Appends a generation and moves the head to it, in one transaction, only if
   * the head is still at `generation - 1`: two writers can never both commit
   * the same number. Returns false when the head had moved.
   */
  async appendGeneration(record: Omit<GenerationRecord, 'createdAt'>): Promise<boolean> {
    return this.db.transaction().execute(async (trx) => {
      const head = await trx.selectFrom('state_heads').select('generation').where('vm', '=', record.vm).where('kind', '=', record.kind).executeTakeFirst();
      if ((head?.generation ?? 0) !== record.generation - 1) return false;
      await trx
        .insertInto('state_generations')
        .values({
          vm: record.vm,
          kind: record.kind,
          generation: record.generation,
          previous_digest: record.previousDigest,
          digest: record.digest,
          size: record.size,
          reason: record.reason,
          wrapped_key: record.wrappedKey,
          ciphertext: record.ciphertext,
          created_at: now(),
        })
        .execute();
      if (head) {
        await trx
          .updateTable('state_heads')
          .set({ generation: record.generation, digest: record.digest })
          .where('vm', '=', record.vm)
          .where('kind', '=', record.kind)
          .execute();
      } else {
        await trx.insertInto('state_heads').values({ vm: record.vm, kind: record.kind, generation: record.generation, digest: record.digest }).execute();
      }
      return true;
    });
  }

  async getGeneration(vm: string, kind: StateKind, generation: number): Promise<GenerationRecord | undefined> {
    const row = await this.db
      .selectFrom('state_generations')
      .selectAll()
      .where('vm', '=', vm)
      .where('kind', '=', kind)
      .where('generation', '=', generation)
      .executeTakeFirst();
    return row && { ...toGenerationSummary(row), wrappedKey: Buffer.from(row.wrapped_key), ciphertext: Buffer.from(row.ciphertext) };
  }

  /** Newest first. */
  async listGenerations(vm: string): Promise<GenerationSummary[]> {
    const rows = await this.db
      .selectFrom('state_generations')
      .select(['vm', 'kind', 'generation', 'previous_digest', 'digest', 'size', 'reason', 'created_at'])
      .where('vm', '=', vm)
      .orderBy('kind')
      .orderBy('generation', 'desc')
      .execute();
    return rows.map(toGenerationSummary);
  }

  /** Deletes the generations of a kind numbered `upTo` or lower. */
  async pruneGenerations(vm: string, kind: StateKind, upTo: number): Promise<void> {
    await this.db.deleteFrom('state_generations').where('vm', '=', vm).where('kind', '=', kind).where('generation', '<=', upTo).execute();
  }

  /** Deletes the vault's generations and head of a VM, of one kind or all. */
  async deleteState(vm: string, kind?: StateKind): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      for (const table of ['state_generations', 'state_heads'] as const) {
        let query = trx.deleteFrom(table).where('vm', '=', vm);
        if (kind !== undefined) query = query.where('kind', '=', kind);
        await query.execute();
      }
    });
  }

  async upsertHost(host: Omit<HostRecord, 'lastSeen'>): Promise<void> {
    const values = { name: host.name, traits: JSON.stringify(host.traits), capabilities: JSON.stringify(host.capabilities), last_seen: now() };
    await this.db
      .insertInto('hosts')
      .values(values)
      .onConflict((c) => c.column('name').doUpdateSet({ traits: values.traits, capabilities: values.capabilities, last_seen: values.last_seen }))
      .execute();
  }

  async listHosts(): Promise<HostRecord[]> {
    return (await this.db.selectFrom('hosts').selectAll().orderBy('name').execute()).map(toHost);
  }

  async countVtpmsByHost(): Promise<Map<string, { total: number; running: number }>> {
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

  async insertToken(token: { name: string; project: string; role: string; tokenHash: string }): Promise<void> {
    await this.db
      .insertInto('api_tokens')
      .values({ name: token.name, project: token.project, role: token.role, token_hash: token.tokenHash, created_at: now() })
      .execute();
  }

  async findTokenByHash(tokenHash: string): Promise<{ name: string; project: string; role: string } | undefined> {
    return this.db.selectFrom('api_tokens').select(['name', 'project', 'role']).where('token_hash', '=', tokenHash).executeTakeFirst();
  }

  async deleteTokensNamed(name: string): Promise<void> {
    await this.db.deleteFrom('api_tokens').where('name', '=', name).execute();
  }

  async getSetting(key: string): Promise<string | undefined> {
    return (await this.db.selectFrom('settings').select('value').where('key', '=', key).executeTakeFirst())?.value;
  }

  /** Sets the value unless one exists; returns the value that is now stored (first writer wins). */
  async setSettingOnce(key: string, value: string): Promise<string> {
    await this.db.insertInto('settings').values({ key, value }).onConflict((c) => c.column('key').doNothing()).execute();
    return (await this.getSetting(key)) ?? value;
  }
}
