/** The audit log's rows; hashing and verifying the chain is src/audit's business. */
import type { Kysely } from 'kysely';
import type { StoreDialect } from '../dialect.js';
import type { AuditEvent, AuditRow, Database } from '../schema.js';
import { atomically } from './atomically.js';

export interface AuditFilter {
  afterSeq?: number;
  vm?: string;
  /** Events about a vTPM of the project, or done by someone of the project. */
  project?: string;
  limit: number;
  newestFirst?: boolean;
}

export class AuditRepository {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: StoreDialect,
  ) {}

  /**
   * Appends an event chained to the newest one; `seal` computes the entry's
   * hash from the previous hash. Appends take turns until each commits, so
   * that two never chain to the same entry.
   */
  async append(seal: (previousHash: string) => AuditRow): Promise<AuditEvent> {
    return atomically(this.db, async (trx) => {
      await this.dialect.lockUntilCommit(trx, 'audit_events');
      const last = await trx
        .selectFrom('audit_events')
        .select('hash')
        .orderBy('seq', 'desc')
        .limit(1)
        .executeTakeFirst();
      const row = seal(last?.hash ?? '');
      const { seq } = await trx.insertInto('audit_events').values(row).returning('seq').executeTakeFirstOrThrow();
      return { seq, ...row };
    });
  }

  async list(filter: AuditFilter): Promise<AuditEvent[]> {
    let query = this.db.selectFrom('audit_events').selectAll().limit(filter.limit);
    if (filter.afterSeq !== undefined) query = query.where('seq', '>', filter.afterSeq);
    if (filter.vm !== undefined) query = query.where('vm', '=', filter.vm);
    if (filter.project !== undefined) {
      const project = filter.project;
      query = query.where((eb) => eb.or([eb('project', '=', project), eb('actor_project', '=', project)]));
    }
    return query.orderBy('seq', filter.newestFirst ? 'desc' : 'asc').execute();
  }
}
