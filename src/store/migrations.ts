/**
 * Schema migrations, in order. Written with the portable subset of the
 * schema builder so that the same list serves SQLite and PostgreSQL; the
 * little that differs (byte strings, numbered keys, triggers) is the
 * StoreDialect's. A migration, once shipped, never changes what it makes on
 * a database that already ran it.
 */
import { DEFAULT_MIGRATION_TABLE, type Kysely, type MigrationProvider, Migrator, sql } from 'kysely';
import { SchemaTooNewError } from '../errors.js';
import type { StoreDialect } from './dialect.js';

type Migration = { up(db: Kysely<unknown>, dialect: StoreDialect): Promise<void> };

const migrations: Record<string, Migration> = {
  '0001_initial': {
    async up(db, dialect) {
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
        .addColumn('ek_certificates', dialect.binaryType)
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
      await dialect
        .addSerialKey(db.schema.createTable('api_tokens'), 'id')
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
    async up(db, dialect) {
      await db.schema
        .createTable('state_generations')
        .addColumn('vm', 'varchar(36)', (c) => c.notNull())
        .addColumn('kind', 'varchar(16)', (c) => c.notNull())
        .addColumn('generation', 'integer', (c) => c.notNull())
        .addColumn('previous_digest', 'varchar(64)', (c) => c.notNull())
        .addColumn('digest', 'varchar(64)', (c) => c.notNull())
        .addColumn('size', 'integer', (c) => c.notNull())
        .addColumn('reason', 'varchar(16)', (c) => c.notNull())
        .addColumn('wrapped_key', dialect.binaryType, (c) => c.notNull())
        .addColumn('ciphertext', dialect.binaryType, (c) => c.notNull())
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
    async up(db) {
      await db.schema
        .alterTable('vtpms')
        .addColumn('firmware', 'varchar(8)', (c) => c.notNull().defaultTo('bios'))
        .execute();
      await db.schema
        .alterTable('vtpms')
        .addColumn('secure_boot', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
    },
  },
  '0004_provisioning_pool': {
    async up(db, dialect) {
      await db.schema
        .createTable('pool_entries')
        .addColumn('id', 'varchar(36)', (c) => c.primaryKey())
        .addColumn('version', 'varchar(8)', (c) => c.notNull())
        .addColumn('secret_ref', 'varchar(512)', (c) => c.notNull())
        .addColumn('state', dialect.binaryType, (c) => c.notNull())
        .addColumn('ek_certificates', dialect.binaryType, (c) => c.notNull())
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .execute();
      await db.schema
        .createIndex('pool_entries_version')
        .on('pool_entries')
        .columns(['version', 'created_at'])
        .execute();
    },
  },
  '0005_identities_and_audit': {
    async up(db, dialect) {
      await db.schema
        .createTable('users')
        .addColumn('name', 'varchar(255)', (c) => c.primaryKey())
        .addColumn('project', 'varchar(255)', (c) => c.notNull())
        .addColumn('roles', 'varchar(255)', (c) => c.notNull())
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .execute();
      // Tokens issued before users existed name their user, project and role themselves.
      await sql
        .raw(
          'INSERT INTO users (name, project, roles, created_at) ' +
            'SELECT name, MIN(project), MIN(role), MIN(created_at) FROM api_tokens GROUP BY name',
        )
        .execute(db);
      await db.schema.alterTable('api_tokens').addColumn('user_name', 'varchar(255)').execute();
      await sql`UPDATE api_tokens SET user_name = name`.execute(db);
      for (const column of ['name', 'project', 'role'])
        await db.schema.alterTable('api_tokens').dropColumn(column).execute();
      await db.schema.alterTable('api_tokens').addColumn('expires_at', 'varchar(32)').execute();
      await db.schema.alterTable('api_tokens').addColumn('revoked_at', 'varchar(32)').execute();
      await db.schema
        .alterTable('vtpms')
        .addColumn('secret_security', 'varchar(16)', (c) => c.notNull().defaultTo('user'))
        .execute();
      await dialect
        .addSerialKey(db.schema.createTable('audit_events'), 'seq')
        .addColumn('at', 'varchar(32)', (c) => c.notNull())
        .addColumn('actor', 'varchar(255)', (c) => c.notNull())
        .addColumn('actor_project', 'varchar(255)', (c) => c.notNull())
        .addColumn('operation', 'varchar(128)', (c) => c.notNull())
        .addColumn('vm', 'varchar(36)')
        .addColumn('project', 'varchar(255)')
        .addColumn('result', 'varchar(64)', (c) => c.notNull())
        .addColumn('detail', 'text', (c) => c.notNull())
        .addColumn('previous_hash', 'varchar(64)', (c) => c.notNull())
        .addColumn('hash', 'varchar(64)', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('audit_events_vm').on('audit_events').columns(['vm', 'seq']).execute();
      await dialect.forbidChanges(db, 'audit_events', 'the audit log is append-only');
    },
  },
  '0006_secret_replacements': {
    async up(db) {
      await db.schema
        .createTable('secret_replacements')
        .addColumn('old_ref', 'varchar(512)', (c) => c.primaryKey())
        .addColumn('new_ref', 'varchar(512)', (c) => c.notNull())
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .execute();
    },
  },
  '0007_remote_hosts_and_migrations': {
    async up(db) {
      await db.schema.alterTable('hosts').addColumn('agent_url', 'varchar(2048)').execute();
      await db.schema.alterTable('hosts').addColumn('agent_secret_ref', 'varchar(512)').execute();
      await db.schema.alterTable('vtpms').addColumn('migrating_to', 'varchar(255)').execute();
    },
  },
  '0008_swtpm_instances': {
    async up(db) {
      await db.schema.alterTable('vtpms').addColumn('instance', 'varchar(64)').execute();
      await db.schema.alterTable('vtpms').addColumn('migrating_instance', 'varchar(64)').execute();
    },
  },
  '0009_host_disabled_and_capacity': {
    async up(db) {
      await db.schema.alterTable('hosts').addColumn('disabled_reason', 'varchar(512)').execute();
      await db.schema.alterTable('hosts').addColumn('max_vtpms', 'integer').execute();
    },
  },
  '0010_host_draining': {
    async up(db) {
      await db.schema
        .alterTable('hosts')
        .addColumn('draining', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
    },
  },
};

const providerFor = (dialect: StoreDialect): MigrationProvider => ({
  getMigrations: async () =>
    Object.fromEntries(
      Object.entries(migrations).map(([name, migration]) => [name, { up: (db) => migration.up(db, dialect) }]),
    ),
});

/** A migration's name starts with its schema version, 0001 up. */
const versionOf = (migration: string) => ({ version: Number.parseInt(migration, 10), migration });

/**
 * Refuses a database that has run migrations this program does not have: a newer version's. kysely's
 * Migrator would refuse too, as "corrupted migrations", which names neither version.
 */
export function requireKnownSchema(applied: readonly string[], where: string): void {
  const unknown = applied.filter((name) => !(name in migrations)).sort();
  if (unknown.length === 0) return;
  const newest = Object.keys(migrations).sort().at(-1)!;
  throw new SchemaTooNewError(where, versionOf(unknown.at(-1)!), versionOf(newest));
}

/** Brings the schema to the latest migration; `onApplied` hears of each one run, in order. */
export async function migrateToLatest(
  db: Kysely<unknown>,
  dialect: StoreDialect,
  onApplied?: (migration: string) => void,
): Promise<void> {
  const tables = await db.introspection.getTables({ withInternalKyselyTables: true });
  if (tables.some((table) => table.name === DEFAULT_MIGRATION_TABLE)) {
    const rows = await sql<{ name: string }>`select name from ${sql.table(DEFAULT_MIGRATION_TABLE)}`.execute(db);
    requireKnownSchema(
      rows.rows.map((row) => row.name),
      'the database',
    );
  }
  const { error, results } = await new Migrator({ db, provider: providerFor(dialect) }).migrateToLatest();
  for (const result of results ?? []) if (result.status === 'Success') onApplied?.(result.migrationName);
  if (error) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName ?? 'unknown';
    throw new Error(`database migration ${failed} failed: ${error instanceof Error ? error.message : String(error)}`);
  }
}
