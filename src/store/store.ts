/**
 * The control plane's database. Every method is one statement or one
 * transaction, written against the dialect-neutral query builder; status
 * changes are compare-and-set so that two replicas (or two requests) can never
 * both move the same vTPM.
 */
import { type Dialect, type Insertable, Kysely, type Selectable } from 'kysely';
import { AlreadyExistsError } from '../errors.js';
import { migrateToLatest } from './migrations.js';
import type { AuditEventTable, Database, GenerationReason, HostTable, StateGenerationTable, StateKind, UserTable, VtpmStatus, VtpmTable } from './schema.js';

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
  secretSecurity: string;
  migratingTo: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface UserRecord {
  name: string;
  project: string;
  roles: string[];
  createdAt: string;
}

export interface TokenRecord {
  id: number;
  user: string;
  createdAt: string;
  expiresAt: string | null;
  revokedAt: string | null;
}

export type AuditRow = Omit<Selectable<AuditEventTable>, 'seq'>;
export type AuditEvent = Selectable<AuditEventTable>;

export interface HostRecord {
  name: string;
  traits: string[];
  capabilities: unknown;
  lastSeen: string;
  /** Set for hosts whose agent runs remotely (`vtpm agent`). */
  agentUrl: string | null;
  agentSecretRef: string | null;
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

export type VtpmPatch = Partial<Pick<VtpmRecord, 'status' | 'ekCertificates' | 'socket' | 'secureBoot' | 'host' | 'migratingTo'>>;

/** Where secrets the deployment owns (the CA's passwords, the provisioning pool's) are kept: the admin user's project. */
export const DEPLOYMENT_PROJECT = 'admin';

/** Settings whose values are key-manager references. */
export const SECRET_SETTINGS = { caSigningKeyPassword: 'ca.signing_key_password', caRootKeyPassword: 'ca.root_key_password' } as const;

/** A place that names a key-manager secret, and what the secret is stored as. */
export interface SecretUse {
  ref: string;
  label: string;
  project: string;
}

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
    secretSecurity: row.secret_security,
    migratingTo: row.migrating_to,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

const toUser = (row: Selectable<UserTable>): UserRecord => ({ name: row.name, project: row.project, roles: row.roles.split(','), createdAt: row.created_at });

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
  return {
    name: row.name, traits: JSON.parse(row.traits), capabilities: JSON.parse(row.capabilities), lastSeen: row.last_seen, agentUrl: row.agent_url, agentSecretRef: row.agent_secret_ref,
  };
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
    secret_security: record.secretSecurity,
    migrating_to: record.migratingTo,
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
        ...(patch.host !== undefined && { host: patch.host }),
        ...(patch.migratingTo !== undefined && { migrating_to: patch.migratingTo }),
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

  /** A host whose agent runs remotely; its traits come when the agent first reports in. Returns the previous credential's reference, if any. */
  async registerRemoteHost(name: string, agentUrl: string, agentSecretRef: string): Promise<string | undefined> {
    return this.db.transaction().execute(async (trx) => {
      const previous = await trx.selectFrom('hosts').select('agent_secret_ref').where('name', '=', name).executeTakeFirst();
      await trx
        .insertInto('hosts')
        .values({ name, traits: '[]', capabilities: '{}', last_seen: now(), agent_url: agentUrl, agent_secret_ref: agentSecretRef })
        .onConflict((c) => c.column('name').doUpdateSet({ agent_url: agentUrl, agent_secret_ref: agentSecretRef }))
        .execute();
      return previous?.agent_secret_ref ?? undefined;
    });
  }

  async getHost(name: string): Promise<HostRecord | undefined> {
    const row = await this.db.selectFrom('hosts').selectAll().where('name', '=', name).executeTakeFirst();
    return row && toHost(row);
  }

  async upsertHost(host: Pick<HostRecord, 'name' | 'traits' | 'capabilities'>): Promise<void> {
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

  async insertUser(user: { name: string; project: string; roles: string[] }): Promise<UserRecord> {
    const row = { name: user.name, project: user.project, roles: user.roles.join(','), created_at: now() };
    try {
      await this.db.insertInto('users').values(row).execute();
    } catch (error) {
      if (isUniqueViolation(error)) throw new AlreadyExistsError('user', user.name);
      throw error;
    }
    return toUser(row);
  }

  async getUser(name: string): Promise<UserRecord | undefined> {
    const row = await this.db.selectFrom('users').selectAll().where('name', '=', name).executeTakeFirst();
    return row && toUser(row);
  }

  async listUsers(): Promise<UserRecord[]> {
    return (await this.db.selectFrom('users').selectAll().orderBy('name').execute()).map(toUser);
  }

  /** Deletes the user and revokes its tokens, in one transaction. */
  async deleteUser(name: string): Promise<boolean> {
    return this.db.transaction().execute(async (trx) => {
      await trx.updateTable('api_tokens').set({ revoked_at: now() }).where('user_name', '=', name).where('revoked_at', 'is', null).execute();
      const deleted = await trx.deleteFrom('users').where('name', '=', name).executeTakeFirst();
      return deleted.numDeletedRows > 0n;
    });
  }

  async insertToken(token: { user: string; tokenHash: string; expiresAt: string | null }): Promise<TokenRecord> {
    const row = { user_name: token.user, token_hash: token.tokenHash, created_at: now(), expires_at: token.expiresAt, revoked_at: null };
    const { id } = await this.db.insertInto('api_tokens').values(row).returning('id').executeTakeFirstOrThrow();
    return { id, user: row.user_name, createdAt: row.created_at, expiresAt: row.expires_at, revokedAt: null };
  }

  /** The user a token stands for, if the token is known, not revoked, not expired, and its user exists. */
  async findUserByTokenHash(tokenHash: string, at: string): Promise<UserRecord | undefined> {
    const row = await this.db
      .selectFrom('api_tokens')
      .innerJoin('users', 'users.name', 'api_tokens.user_name')
      .select(['users.name', 'users.project', 'users.roles', 'users.created_at'])
      .where('api_tokens.token_hash', '=', tokenHash)
      .where('api_tokens.revoked_at', 'is', null)
      .where((eb) => eb.or([eb('api_tokens.expires_at', 'is', null), eb('api_tokens.expires_at', '>', at)]))
      .executeTakeFirst();
    return row && toUser(row);
  }

  async listTokens(user?: string): Promise<TokenRecord[]> {
    let query = this.db.selectFrom('api_tokens').select(['id', 'user_name', 'created_at', 'expires_at', 'revoked_at']).orderBy('id');
    if (user !== undefined) query = query.where('user_name', '=', user);
    return (await query.execute()).map((row) => ({ id: row.id, user: row.user_name, createdAt: row.created_at, expiresAt: row.expires_at, revokedAt: row.revoked_at }));
  }

  /** Revokes a token; false when there is no such token or it was revoked already. */
  async revokeToken(id: number): Promise<boolean> {
    const updated = await this.db.updateTable('api_tokens').set({ revoked_at: now() }).where('id', '=', id).where('revoked_at', 'is', null).executeTakeFirst();
    return updated.numUpdatedRows > 0n;
  }

  async revokeTokensOf(user: string): Promise<void> {
    await this.db.updateTable('api_tokens').set({ revoked_at: now() }).where('user_name', '=', user).where('revoked_at', 'is', null).execute();
  }

  async tokenExists(tokenHash: string): Promise<boolean> {
    return (await this.db.selectFrom('api_tokens').select('id').where('token_hash', '=', tokenHash).where('revoked_at', 'is', null).executeTakeFirst()) !== undefined;
  }

  /** Appends an audit event, chained to the newest one; `seal` computes the entry's hash from the previous hash. */
  async appendAuditEvent(seal: (previousHash: string) => AuditRow): Promise<AuditEvent> {
    return this.db.transaction().execute(async (trx) => {
      const last = await trx.selectFrom('audit_events').select('hash').orderBy('seq', 'desc').limit(1).executeTakeFirst();
      const row = seal(last?.hash ?? '');
      const { seq } = await trx.insertInto('audit_events').values(row).returning('seq').executeTakeFirstOrThrow();
      return { seq, ...row };
    });
  }

  /** Audit events in order, from `afterSeq`, optionally only those about one VM or one project. */
  async listAuditEvents(filter: { afterSeq?: number; vm?: string; project?: string; limit: number; newestFirst?: boolean }): Promise<AuditEvent[]> {
    let query = this.db.selectFrom('audit_events').selectAll().limit(filter.limit);
    if (filter.afterSeq !== undefined) query = query.where('seq', '>', filter.afterSeq);
    if (filter.vm !== undefined) query = query.where('vm', '=', filter.vm);
    if (filter.project !== undefined) {
      const project = filter.project;
      query = query.where((eb) => eb.or([eb('project', '=', project), eb('actor_project', '=', project)]));
    }
    return query.orderBy('seq', filter.newestFirst ? 'desc' : 'asc').execute();
  }

  /** Every place that names a key-manager secret, with the label and project the secret is stored under. */
  async listSecretUses(): Promise<SecretUse[]> {
    const vtpms = await this.db.selectFrom('vtpms').select(['vm', 'secret_ref', 'project']).orderBy('vm').execute();
    const pool = await this.db.selectFrom('pool_entries').select(['id', 'secret_ref']).orderBy('id').execute();
    const settings = await this.db.selectFrom('settings').select(['key', 'value']).where('key', 'in', Object.values(SECRET_SETTINGS)).orderBy('key').execute();
    const hosts = await this.db.selectFrom('hosts').select(['name', 'agent_secret_ref']).where('agent_secret_ref', 'is not', null).orderBy('name').execute();
    return [
      ...vtpms.map((row) => ({ ref: row.secret_ref, label: `vtpm-${row.vm}`, project: row.project })),
      ...pool.map((row) => ({ ref: row.secret_ref, label: `vtpm-pool-${row.id}`, project: DEPLOYMENT_PROJECT })),
      ...settings.map((row) => ({ ref: row.value, label: row.key, project: DEPLOYMENT_PROJECT })),
      ...hosts.map((row) => ({ ref: row.agent_secret_ref!, label: `vtpm-host-agent-${row.name}`, project: DEPLOYMENT_PROJECT })),
    ];
  }

  async recordSecretReplacement(oldRef: string, newRef: string): Promise<void> {
    await this.db.insertInto('secret_replacements').values({ old_ref: oldRef, new_ref: newRef, created_at: now() }).execute();
  }

  async listSecretReplacements(): Promise<Array<{ oldRef: string; newRef: string }>> {
    const rows = await this.db.selectFrom('secret_replacements').select(['old_ref', 'new_ref']).orderBy('created_at').execute();
    return rows.map((row) => ({ oldRef: row.old_ref, newRef: row.new_ref }));
  }

  async forgetSecretReplacement(oldRef: string): Promise<void> {
    await this.db.deleteFrom('secret_replacements').where('old_ref', '=', oldRef).execute();
  }

  /** Points every use of `oldRef` at `newRef`, in one transaction; returns how many uses moved. */
  async replaceSecretRef(oldRef: string, newRef: string): Promise<number> {
    return this.db.transaction().execute(async (trx) => {
      const moved = await Promise.all([
        trx.updateTable('vtpms').set({ secret_ref: newRef }).where('secret_ref', '=', oldRef).executeTakeFirst(),
        trx.updateTable('pool_entries').set({ secret_ref: newRef }).where('secret_ref', '=', oldRef).executeTakeFirst(),
        trx.updateTable('settings').set({ value: newRef }).where('key', 'in', Object.values(SECRET_SETTINGS)).where('value', '=', oldRef).executeTakeFirst(),
        trx.updateTable('hosts').set({ agent_secret_ref: newRef }).where('agent_secret_ref', '=', oldRef).executeTakeFirst(),
      ]);
      return moved.reduce((sum, result) => sum + Number(result.numUpdatedRows), 0);
    });
  }

  async isSecretRefInUse(ref: string): Promise<boolean> {
    return (await this.listSecretUses()).some((use) => use.ref === ref);
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
