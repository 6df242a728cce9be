/** The state vault's generations and heads; what binds a generation is src/vault's business, not the store's. */
import type { Kysely, Selectable } from 'kysely';
import { now } from '../clock.js';
import type {
  Database,
  GenerationRecord,
  GenerationSummary,
  NewGeneration,
  StateGenerationTable,
  StateHead,
  StateKind,
} from '../schema.js';
import { atomically } from './atomically.js';

// A copy: drivers may hand out views of a reused buffer, and the vault zeroes what it opens.
const decodeGeneration = (row: Selectable<StateGenerationTable>): GenerationRecord => ({
  ...row,
  wrapped_key: Buffer.from(row.wrapped_key),
  ciphertext: Buffer.from(row.ciphertext),
});

export class GenerationRepository {
  constructor(private readonly db: Kysely<Database>) {}

  async head(vm: string, kind: StateKind): Promise<StateHead | undefined> {
    return this.db
      .selectFrom('state_heads')
      .select(['generation', 'digest'])
      .where('vm', '=', vm)
      .where('kind', '=', kind)
      .executeTakeFirst();
  }

  /**
   * Appends a generation and moves the head to it, in one transaction, only if
   * the head is still at `generation - 1`: two writers can never both commit
   * the same number. Returns false when the head had moved. The head moves
   * first, by a conditional write: on a database with concurrent writers the
   * second writer waits for the first's commit and then finds the head moved.
   */
  async append(row: NewGeneration): Promise<boolean> {
    return atomically(this.db, async (trx) => {
      const moved =
        row.generation === 1
          ? await trx
              .insertInto('state_heads')
              .values({ vm: row.vm, kind: row.kind, generation: 1, digest: row.digest })
              .onConflict((c) => c.columns(['vm', 'kind']).doNothing())
              .executeTakeFirst()
              .then((result) => Number(result.numInsertedOrUpdatedRows ?? 0n))
          : await trx
              .updateTable('state_heads')
              .set({ generation: row.generation, digest: row.digest })
              .where('vm', '=', row.vm)
              .where('kind', '=', row.kind)
              .where('generation', '=', row.generation - 1)
              .executeTakeFirst()
              .then((result) => Number(result.numUpdatedRows));
      if (moved !== 1) return false;
      await trx
        .insertInto('state_generations')
        .values({
          vm: row.vm,
          kind: row.kind,
          generation: row.generation,
          previous_digest: row.previous_digest,
          digest: row.digest,
          size: row.size,
          reason: row.reason,
          wrapped_key: row.wrapped_key,
          ciphertext: row.ciphertext,
          created_at: now(),
        })
        .execute();
      return true;
    });
  }

  async get(vm: string, kind: StateKind, generation: number): Promise<GenerationRecord | undefined> {
    const row = await this.db
      .selectFrom('state_generations')
      .selectAll()
      .where('vm', '=', vm)
      .where('kind', '=', kind)
      .where('generation', '=', generation)
      .executeTakeFirst();
    return row && decodeGeneration(row);
  }

  /** The newest stored generation of a kind, whatever the head says (the vault checks one against the other). */
  async newest(vm: string, kind: StateKind): Promise<GenerationRecord | undefined> {
    const row = await this.db
      .selectFrom('state_generations')
      .selectAll()
      .where('vm', '=', vm)
      .where('kind', '=', kind)
      .orderBy('generation', 'desc')
      .limit(1)
      .executeTakeFirst();
    return row && decodeGeneration(row);
  }

  /** Per kind, newest first. */
  async list(vm: string): Promise<GenerationSummary[]> {
    return this.db
      .selectFrom('state_generations')
      .select(['vm', 'kind', 'generation', 'previous_digest', 'digest', 'size', 'reason', 'created_at'])
      .where('vm', '=', vm)
      .orderBy('kind')
      .orderBy('generation', 'desc')
      .execute();
  }

  /** The reason of a `sync` generation becomes `stop`: the run it was taken in ended with it. */
  async markStopped(vm: string, kind: StateKind, generation: number): Promise<void> {
    await this.db
      .updateTable('state_generations')
      .set({ reason: 'stop' })
      .where('vm', '=', vm)
      .where('kind', '=', kind)
      .where('generation', '=', generation)
      .where('reason', '=', 'sync')
      .execute();
  }

  /** Deletes these generations of a kind (retention's choice; never the head). */
  async remove(vm: string, kind: StateKind, generations: readonly number[]): Promise<void> {
    if (generations.length === 0) return;
    await this.db
      .deleteFrom('state_generations')
      .where('vm', '=', vm)
      .where('kind', '=', kind)
      .where('generation', 'in', generations)
      .execute();
  }

  /** Deletes the generations and head of a VM, of one kind or all. */
  async forget(vm: string, kind?: StateKind): Promise<void> {
    await atomically(this.db, async (trx) => {
      for (const table of ['state_generations', 'state_heads'] as const) {
        let query = trx.deleteFrom(table).where('vm', '=', vm);
        if (kind !== undefined) query = query.where('kind', '=', kind);
        await query.execute();
      }
    });
  }
}
