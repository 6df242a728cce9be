/** The hosts vTPMs run on: the control plane's own, and remote agents (`vtpm agent`). */
import type { Kysely, Selectable } from 'kysely';
import { now } from '../clock.js';
import type { Database, HostRecord, HostTable } from '../schema.js';
import { atomically } from './atomically.js';

const decodeHost = (row: Selectable<HostTable>): HostRecord => ({
  ...row,
  traits: JSON.parse(row.traits),
  capabilities: JSON.parse(row.capabilities),
  draining: row.draining === 1,
});

export class HostRepository {
  constructor(private readonly db: Kysely<Database>) {}

  /**
   * A host whose agent runs remotely; its traits come when the agent first
   * reports in. Returns the previous credential's reference, if any.
   */
  async registerRemote(name: string, agentUrl: string, agentSecretRef: string): Promise<string | undefined> {
    return atomically(this.db, async (trx) => {
      const previous = await trx
        .selectFrom('hosts')
        .select('agent_secret_ref')
        .where('name', '=', name)
        .executeTakeFirst();
      await trx
        .insertInto('hosts')
        .values({
          name,
          traits: '[]',
          capabilities: '{}',
          last_seen: now(),
          agent_url: agentUrl,
          agent_secret_ref: agentSecretRef,
        })
        .onConflict((c) => c.column('name').doUpdateSet({ agent_url: agentUrl, agent_secret_ref: agentSecretRef }))
        .execute();
      return previous?.agent_secret_ref ?? undefined;
    });
  }

  /** Records what a host's agent reported; a remote host's agent URL and credential stay as registered. */
  async upsert(host: Pick<HostRecord, 'name' | 'traits' | 'capabilities' | 'max_vtpms'>): Promise<void> {
    const reported = {
      traits: JSON.stringify(host.traits),
      capabilities: JSON.stringify(host.capabilities),
      max_vtpms: host.max_vtpms,
      last_seen: now(),
    };
    await this.db
      .insertInto('hosts')
      .values({ name: host.name, ...reported })
      .onConflict((c) => c.column('name').doUpdateSet(reported))
      .execute();
  }

  /** The host's agent is alive now. */
  async touch(name: string): Promise<void> {
    await this.db.updateTable('hosts').set({ last_seen: now() }).where('name', '=', name).execute();
  }

  /**
   * Disables the host (`reason`), draining it too when asked, or enables it again (null); false when no such
   * host is registered.
   */
  async setDisabled(name: string, reason: string | null, options: { draining?: boolean } = {}): Promise<boolean> {
    const result = await this.db
      .updateTable('hosts')
      .set({ disabled_reason: reason, draining: reason !== null && options.draining ? 1 : 0 })
      .where('name', '=', name)
      .executeTakeFirst();
    return result.numUpdatedRows > 0n;
  }

  async get(name: string): Promise<HostRecord | undefined> {
    const row = await this.db.selectFrom('hosts').selectAll().where('name', '=', name).executeTakeFirst();
    return row && decodeHost(row);
  }

  async list(): Promise<HostRecord[]> {
    return (await this.db.selectFrom('hosts').selectAll().orderBy('name').execute()).map(decodeHost);
  }
}
