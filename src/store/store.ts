/**
 * The control plane's database: one repository per aggregate, each method one
 * statement or one transaction, written against the dialect-neutral query
 * builder. What differs between databases is the StoreDialect's; nothing here
 * names SQLite.
 */
import { Kysely, sql } from 'kysely';
import type { StoreDialect } from './dialect.js';
import { migrateToLatest } from './migrations.js';
import { AuditRepository } from './repositories/audit.js';
import { GenerationRepository } from './repositories/generations.js';
import { HostRepository } from './repositories/hosts.js';
import { IdentityRepository } from './repositories/identity.js';
import { PoolRepository } from './repositories/pool.js';
import { SecretRepository } from './repositories/secrets.js';
import { SettingRepository } from './repositories/settings.js';
import { VtpmRepository } from './repositories/vtpms.js';
import type { Database } from './schema.js';

export class Store {
  readonly vtpms: VtpmRepository;
  readonly generations: GenerationRepository;
  readonly hosts: HostRepository;
  readonly identity: IdentityRepository;
  readonly audit: AuditRepository;
  readonly pool: PoolRepository;
  readonly secrets: SecretRepository;
  readonly settings: SettingRepository;

  private constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: StoreDialect,
  ) {
    this.vtpms = new VtpmRepository(db, dialect);
    this.generations = new GenerationRepository(db);
    this.hosts = new HostRepository(db);
    this.identity = new IdentityRepository(db, dialect);
    this.audit = new AuditRepository(db, dialect);
    this.pool = new PoolRepository(db, dialect);
    this.secrets = new SecretRepository(db);
    this.settings = new SettingRepository(db);
  }

  /** Opens the database and brings its schema to the latest migration, telling `onMigration` of each one run. */
  static async open(dialect: StoreDialect, onMigration?: (migration: string) => void): Promise<Store> {
    const db = new Kysely<Database>({ dialect: dialect.kysely });
    await migrateToLatest(db as Kysely<unknown>, dialect, onMigration).catch(async (error: unknown) => {
      await db.destroy();
      throw error;
    });
    return new Store(db, dialect);
  }

  /** Runs `work` on repositories whose every statement is part of one transaction: all of it lands, or none. */
  transaction<T>(work: (store: Store) => Promise<T>): Promise<T> {
    return this.db.transaction().execute((trx) => work(new Store(trx, this.dialect)));
  }

  /** Which database this is, for logs and errors (never with its password). */
  get description(): string {
    return this.dialect.description;
  }

  /** Whether the store is the embedded SQLite file, which `vtpm backup` copies itself. */
  get isEmbedded(): boolean {
    return this.dialect.name === 'sqlite';
  }

  /** The database answers a query (what `/readyz` asks). */
  async checkReachable(): Promise<void> {
    await sql`SELECT 1`.execute(this.db);
  }

  async close(): Promise<void> {
    await this.db.destroy();
  }
}
