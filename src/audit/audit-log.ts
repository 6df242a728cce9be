/**
 * The audit log: who did what to which VM, with what result, and every read
 * of a vTPM secret. Entries are append-only (the database refuses updates and
 * deletes) and hash-chained: each entry's hash covers its content and the
 * previous entry's hash, so that `vtpm audit verify` finds any entry that was
 * changed, removed or inserted since. Entries never carry secrets, tokens,
 * passphrases or state: only names, codes and references.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { createHash } from 'node:crypto';
import type { AuditVerification, AuditView } from '../api/identity.js';
import type { AuditEvent, AuditRow, Store } from '../store/index.js';
import type { Principal } from '../auth/policy.js';

export interface AuditEntry {
  operation: string;
  vm?: string | undefined;
  /** The project of the vTPM acted on. */
  project?: string | undefined;
  result: string;
  detail?: Record<string, string | number | boolean> | undefined;
}

const SYSTEM: Actor = { name: 'vtpm-manager', project: '-' };
const PAGE = 500;

/** Whom a request works for and on which vTPM, for code below the API (the key manager) that records what it does. */
export interface RequestContext {
  principal: Principal;
  vm?: string | undefined;
  /**
   * The project of the vTPM the request is about, when it exists. Asked for only when something is recorded:
   * a request that changes nothing (a read) looks it up then, if ever.
   */
  project?: (() => Promise<string | undefined>) | undefined;
  /** Secrets this request has read, and that are recorded already: one request's reads of one secret are one event. */
  secretsRead?: Set<string>;
  /** The request's own entry, which its operation may commit with its last change (AuditLog.transaction). */
  answer?: RequestAnswer;
  /** Its log id (http/request-id.ts), which the control plane's calls to agents carry on. */
  requestId?: string;
}
export const requestContext = new AsyncLocalStorage<RequestContext>();

type Actor = Pick<Principal, 'name' | 'project'>;

/**
 * The entry a request gets when it succeeds, known before it does. An operation that commits it with its
 * own last change spares the request an append of its own; the API records the answer once more only when
 * it is not the one committed (the operation succeeded, then the answer failed).
 */
export interface RequestAnswer {
  readonly actor: Actor;
  succeeded(): AuditEntry;
  /** The entry once it is in the log. */
  committed?: AuditEntry | undefined;
}

interface HeldEntry {
  entry: AuditEntry;
  actor: Actor;
}

/** What an operation records while it holds its entries back for its next transaction (AuditLog.holding). */
const heldEntries = new AsyncLocalStorage<HeldEntry[]>();

function hashOf(row: Omit<AuditRow, 'hash'>): string {
  const content = [
    row.previous_hash,
    row.at,
    row.actor,
    row.actor_project,
    row.operation,
    row.vm ?? '',
    row.project ?? '',
    row.result,
    row.detail,
  ];
  return createHash('sha256').update(JSON.stringify(content)).digest('hex');
}

async function append(store: Store, entries: HeldEntry[]): Promise<void> {
  for (const { entry, actor } of entries) {
    await store.audit.append((previousHash) => {
      const row = {
        at: new Date().toISOString(),
        actor: actor.name,
        actor_project: actor.project,
        operation: entry.operation,
        vm: entry.vm ?? null,
        project: entry.project ?? null,
        result: entry.result,
        detail: JSON.stringify(entry.detail ?? {}),
        previous_hash: previousHash,
      };
      return { ...row, hash: hashOf(row) };
    });
  }
}

const toView = (event: AuditEvent): AuditView => ({
  seq: event.seq,
  at: event.at,
  actor: event.actor,
  actor_project: event.actor_project,
  operation: event.operation,
  vm: event.vm,
  project: event.project,
  result: event.result,
  detail: JSON.parse(event.detail) as Record<string, unknown>,
});

export class AuditLog {
  constructor(private readonly store: Store) {}

  async record(entry: AuditEntry, actor: Actor = requestContext.getStore()?.principal ?? SYSTEM): Promise<void> {
    const held = heldEntries.getStore();
    if (held) held.push({ entry, actor });
    else await append(this.store, [{ entry, actor }]);
  }

  /**
   * Runs `work` with what it records held back for its next `transaction`, so that an entry and the change
   * it goes with are one commit; whatever is still held when `work` ends, however it ends, is appended then.
   * `work` commits them before anything it makes leaves the process (start: before swtpm gets the secret).
   */
  async holding<T>(work: () => Promise<T>): Promise<T> {
    const held: HeldEntry[] = [];
    try {
      return await heldEntries.run(held, work);
    } finally {
      await append(this.store, held.splice(0));
    }
  }

  /**
   * Store.transaction, with the entries held for it and, with `answer`, the request's own entry as succeeded:
   * the change and what the log says of it land together, in one commit.
   */
  async transaction<T>(work: (store: Store) => Promise<T>, options: { answer?: boolean } = {}): Promise<T> {
    const held = heldEntries.getStore() ?? [];
    const owed = held.splice(0);
    const answer = options.answer ? requestContext.getStore()?.answer : undefined;
    const succeeded = answer && !answer.committed ? answer.succeeded() : undefined;
    let result: T;
    try {
      result = await this.store.transaction(async (inside) => {
        const changed = await work(inside);
        await append(inside, succeeded && answer ? [...owed, { entry: succeeded, actor: answer.actor }] : owed);
        return changed;
      });
    } catch (error) {
      held.unshift(...owed);
      throw error;
    }
    if (answer && succeeded) answer.committed = succeeded;
    return result;
  }

  async list(filter: { vm?: string | undefined; project?: string | undefined; limit: number }): Promise<AuditView[]> {
    return (await this.store.audit.list({ ...filter, newestFirst: true })).map(toView);
  }

  /** Walks the whole chain from the first entry. */
  async verify(): Promise<AuditVerification> {
    let previous = '';
    let afterSeq = 0;
    let events = 0;
    for (;;) {
      const page = await this.store.audit.list({ afterSeq, limit: PAGE });
      for (const event of page) {
        const { seq, hash, ...content } = event;
        if (content.previous_hash !== previous)
          return {
            ok: false,
            events,
            broken_at: seq,
            reason: 'it does not follow the entry before it (an entry was removed or inserted)',
          };
        if (hashOf(content) !== hash)
          return { ok: false, events, broken_at: seq, reason: 'its content does not match its hash (it was changed)' };
        previous = hash;
        afterSeq = seq;
        events += 1;
      }
      if (page.length < PAGE) return { ok: true, events };
    }
  }
}
