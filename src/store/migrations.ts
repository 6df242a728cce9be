/**
 * Schema migrations, in order. Written with the portable subset of the
 * schema builder so that the same list serves SQLite and PostgreSQL.
 */
import { type Kysely, type Migration, type MigrationProvider, Migrator } from 'kysely';

const migrations: Record<string, Migration> = {
  '0001_initial': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('vtpms')
        .addColumn('vm', 'varchar(36)', (c) => c.primaryKey())
        .addColumn('project', 'varchar(255)', (c) => c.notNull())
        .addColumn('version', 'varchar(8)', (c) => c.notNull())
        .addColumn('model', 'varchar(16)', (c) => c.notNull())
        .addColumn('host', 'varchar(255)', (c) => c.notNull())
        .addColumn('status', 'varchar(16)', (c) => c.notNull())
        .addColumn('secret_ref', 'varchar(512)', (c) => c.notNull())
        .addColumn('spec_claims', 'text', (c) => c.notNull())
        .addColumn('ek_certificates', 'blob')
        .addColumn('socket', 'varchar(4096)')
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .addColumn('updated_at', 'varchar(32)', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('vtpms_host').on('vtpms').column('host').execute();
      await db.schema
        .createTable('hosts')
        .addColumn('name', 'varchar(255)', (c) => c.primaryKey())
        .addColumn('traits', 'text', (c) => c.notNull())
        .addColumn('capabilities', 'text', (c) => c.notNull())
        .addColumn('last_seen', 'varchar(32)', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('api_tokens')
        .addColumn('id', 'integer', (c) => c.primaryKey().autoIncrement())
        .addColumn('name', 'varchar(255)', (c) => c.notNull())
        .addColumn('project', 'varchar(255)', (c) => c.notNull())
        .addColumn('role', 'varchar(32)', (c) => c.notNull())
        .addColumn('token_hash', 'varchar(64)', (c) => c.notNull().unique())
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('settings')
        .addColumn('key', 'varchar(255)', (c) => c.primaryKey())
        .addColumn('value', 'text', (c) => c.notNull())
        .execute();
    },
  },
  '0002_state_vault': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('state_generations')
        .addColumn('vm', 'varchar(36)', (c) => c.notNull())
        .addColumn('kind', 'varchar(16)', (c) => c.notNull())
        .addColumn('generation', 'integer', (c) => c.notNull())
        .addColumn('previous_digest', 'varchar(64)', (c) => c.notNull())
        .addColumn('digest', 'varchar(64)', (c) => c.notNull())
        .addColumn('size', 'integer', (c) => c.notNull())
        .addColumn('reason', 'varchar(16)', (c) => c.notNull())
        .addColumn('wrapped_key', 'blob', (c) => c.notNull())
        .addColumn('ciphertext', 'blob', (c) => c.notNull())
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .addPrimaryKeyConstraint('state_generations_pk', ['vm', 'kind', 'generation'])
        .execute();
      await db.schema
        .createTable('state_heads')
        .addColumn('vm', 'varchar(36)', (c) => c.notNull())
        .addColumn('kind', 'varchar(16)', (c) => c.notNull())
        .addColumn('generation', 'integer', (c) => c.notNull())
        .addColumn('digest', 'varchar(64)', (c) => c.notNull())
        .addPrimaryKeyConstraint('state_heads_pk', ['vm', 'kind'])
        .execute();
    },
  },
  '0003_firmware': {
    async up(db: Kysely<unknown>) {
      await db.schema.alterTable('vtpms').addColumn('firmware', 'varchar(8)', (c) => c.notNull().defaultTo('bios')).execute();
      await db.schema.alterTable('vtpms').addColumn('secure_boot', 'integer', (c) => c.notNull().defaultTo(0)).execute();
    },
  },
  '0004_provisioning_pool': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('pool_entries')
        .addColumn('id', 'varchar(36)', (c) => c.primaryKey())
        .addColumn('version', 'varchar(8)', (c) => c.notNull())
        .addColumn('secret_ref', 'varchar(512)', (c) => c.notNull())
        .addColumn('state', 'blob', (c) => c.notNull())
        .addColumn('ek_certificates', 'blob', (c) => c.notNull())
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('pool_entries_version').on('pool_entries').columns(['version', 'created_at']).execute();
    },
  },
};

const provider: MigrationProvider = { getMigrations: async () => migrations };

export async function migrateToLatest(db: Kysely<unknown>): Promise<void> {
  const { error, results } = await new Migrator({ db, provider }).migrateToLatest();
  if (error) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName ?? 'unknown';
    throw new Error(`database migration ${failed} failed: ${error instanceof Error ? error.message : String(error)}`);
  }
}
