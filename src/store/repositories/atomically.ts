/**
 * A repository's transaction, or its part of a larger one: a repository
 * built over a transaction (Store.transaction) runs its statements in it, as
 * kysely does not nest transactions.
 */
import type { Kysely, Transaction } from 'kysely';
import type { Database } from '../schema.js';

export function atomically<T>(db: Kysely<Database>, work: (trx: Transaction<Database>) => Promise<T>): Promise<T> {
  return db.isTransaction ? work(db as Transaction<Database>) : db.transaction().execute(work);
}
