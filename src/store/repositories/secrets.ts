/**
 * Every place in the database that names a key-manager secret, seen as one:
 * what key rotation by replacement (src/keys/rotation-by-replacement.ts) walks
 * and rewrites. The secrets themselves never enter the database.
 */
import type { Kysely } from 'kysely';
import { now } from '../clock.js';
import type { Database } from '../schema.js';
import { atomically } from './atomically.js';

/** Where secrets the deployment owns (the CA's passwords, the pool's) are kept: the admin user's project. */
export const DEPLOYMENT_PROJECT = 'admin';

/** Settings whose values are key-manager references. */
export const SECRET_SETTINGS = {
  caSigningKeyPassword: 'ca.signing_key_password',
  caRootKeyPassword: 'ca.root_key_password',
} as const;

/** A place that names a key-manager secret, and what the secret is stored as. */
export interface SecretUse {
  ref: string;
  label: string;
  project: string;
}

const secretSettings = Object.values(SECRET_SETTINGS);

export class SecretRepository {
  constructor(private readonly db: Kysely<Database>) {}

  /** Every use, with the label and project the secret is stored under. */
  async listUses(): Promise<SecretUse[]> {
    const vtpms = await this.db.selectFrom('vtpms').select(['vm', 'secret_ref', 'project']).orderBy('vm').execute();
    const pool = await this.db.selectFrom('pool_entries').select(['id', 'secret_ref']).orderBy('id').execute();
    const settings = await this.db
      .selectFrom('settings')
      .select(['key', 'value'])
      .where('key', 'in', secretSettings)
      .orderBy('key')
      .execute();
    const hosts = await this.db
      .selectFrom('hosts')
      .select(['name', 'agent_secret_ref'])
      .where('agent_secret_ref', 'is not', null)
      .orderBy('name')
      .execute();
    return [
      ...vtpms.map((row) => ({ ref: row.secret_ref, label: `vtpm-${row.vm}`, project: row.project })),
      ...pool.map((row) => ({ ref: row.secret_ref, label: `vtpm-pool-${row.id}`, project: DEPLOYMENT_PROJECT })),
      ...settings.map((row) => ({ ref: row.value, label: row.key, project: DEPLOYMENT_PROJECT })),
      ...hosts.map((row) => ({
        ref: row.agent_secret_ref!,
        label: `vtpm-host-agent-${row.name}`,
        project: DEPLOYMENT_PROJECT,
      })),
    ];
  }

  /** Journalled between storing the new secret and deleting the old one, so that a crash there is finished later. */
  async recordReplacement(oldRef: string, newRef: string): Promise<void> {
    await this.db
      .insertInto('secret_replacements')
      .values({ old_ref: oldRef, new_ref: newRef, created_at: now() })
      .execute();
  }

  async listReplacements(): Promise<Array<{ old_ref: string; new_ref: string }>> {
    return this.db.selectFrom('secret_replacements').select(['old_ref', 'new_ref']).orderBy('created_at').execute();
  }

  async forgetReplacement(oldRef: string): Promise<void> {
    await this.db.deleteFrom('secret_replacements').where('old_ref', '=', oldRef).execute();
  }

  /** Points every use of `oldRef` at `newRef`, in one transaction; returns how many uses moved. */
  async replaceRef(oldRef: string, newRef: string): Promise<number> {
    return atomically(this.db, async (trx) => {
      const moved = await Promise.all([
        trx.updateTable('vtpms').set({ secret_ref: newRef }).where('secret_ref', '=', oldRef).executeTakeFirst(),
        trx.updateTable('pool_entries').set({ secret_ref: newRef }).where('secret_ref', '=', oldRef).executeTakeFirst(),
        trx
          .updateTable('settings')
          .set({ value: newRef })
          .where('key', 'in', secretSettings)
          .where('value', '=', oldRef)
          .executeTakeFirst(),
        trx
          .updateTable('hosts')
          .set({ agent_secret_ref: newRef })
          .where('agent_secret_ref', '=', oldRef)
          .executeTakeFirst(),
      ]);
      return moved.reduce((sum, result) => sum + Number(result.numUpdatedRows), 0);
    });
  }

  async isInUse(ref: string): Promise<boolean> {
    return (await this.listUses()).some((use) => use.ref === ref);
  }
}
