/** Deployment-wide settings, each written once (the CA's key-password references, among others). */
import type { Kysely } from 'kysely';
import type { Database } from '../schema.js';

export class SettingRepository {
  constructor(private readonly db: Kysely<Database>) {}

  async get(key: string): Promise<string | undefined> {
    return (await this.db.selectFrom('settings').select('value').where('key', '=', key).executeTakeFirst())?.value;
  }

  /** Sets the value unless one exists; returns the value that is now stored (first writer wins, across replicas). */
  async setOnce(key: string, value: string): Promise<string> {
    await this.db
      .insertInto('settings')
      .values({ key, value })
      .onConflict((c) => c.column('key').doNothing())
      .execute();
    return (await this.get(key)) ?? value;
  }
}
