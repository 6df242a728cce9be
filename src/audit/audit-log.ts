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

const SYSTEM: Pick<Principal, 'name' | 'project'> = { name: 'vtpm-manager', project: '-' };
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
}
export const requestContext = new AsyncLocalStorage<RequestContext>();

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

  async record(
    entry: AuditEntry,
    actor: Pick<Principal, 'name' | 'project'> = requestContext.getStore()?.principal ?? SYSTEM,
  ): Promise<void> {
    await this.store.audit.append((previousHash) => {
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
