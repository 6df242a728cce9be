/** Users and their API tokens; tokens are kept only as hashes (src/auth/tokens.ts issues them). */
import type { Kysely, Selectable } from 'kysely';
import { AlreadyExistsError } from '../../errors.js';
import { now } from '../clock.js';
import type { StoreDialect } from '../dialect.js';
import type { ApiTokenTable, Database, TokenRecord, UserRecord, UserTable } from '../schema.js';
import { atomically } from './atomically.js';
import { preparedQuery } from './prepared-query.js';

// Comma-separated in one column: role names never contain a comma, and a join table would buy nothing.
const decodeUser = (row: Selectable<UserTable>): UserRecord => ({ ...row, roles: row.roles.split(',') });

type NewToken = Pick<Selectable<ApiTokenTable>, 'user_name' | 'token_hash' | 'expires_at'>;

const TOKEN_COLUMNS = ['id', 'user_name', 'created_at', 'expires_at', 'revoked_at'] as const;

async function revokeTokensOf(db: Kysely<Database>, user: string): Promise<void> {
  await db
    .updateTable('api_tokens')
    .set({ revoked_at: now() })
    .where('user_name', '=', user)
    .where('revoked_at', 'is', null)
    .execute();
}

export class IdentityRepository {
  /** Every authenticated request asks this: prepared once (prepared-query.ts). */
  private readonly tokenHolder;

  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: StoreDialect,
  ) {
    this.tokenHolder = preparedQuery(db, (tokenHash: string, at: string) =>
      db
        .selectFrom('api_tokens')
        .innerJoin('users', 'users.name', 'api_tokens.user_name')
        .select(['users.name', 'users.project', 'users.roles', 'users.created_at'])
        .where('api_tokens.token_hash', '=', tokenHash)
        .where('api_tokens.revoked_at', 'is', null)
        .where((eb) => eb.or([eb('api_tokens.expires_at', 'is', null), eb('api_tokens.expires_at', '>', at)])),
    );
  }

  async insertUser(user: Omit<UserRecord, 'created_at'>): Promise<UserRecord> {
    const row = { name: user.name, project: user.project, roles: user.roles.join(','), created_at: now() };
    try {
      await this.db.insertInto('users').values(row).execute();
    } catch (error) {
      if (this.dialect.isUniqueViolation(error)) throw new AlreadyExistsError('user', user.name);
      throw error;
    }
    return decodeUser(row);
  }

  async getUser(name: string): Promise<UserRecord | undefined> {
    const row = await this.db.selectFrom('users').selectAll().where('name', '=', name).executeTakeFirst();
    return row && decodeUser(row);
  }

  async listUsers(): Promise<UserRecord[]> {
    return (await this.db.selectFrom('users').selectAll().orderBy('name').execute()).map(decodeUser);
  }

  /** Deletes the user and revokes its tokens, in one transaction. */
  async deleteUser(name: string): Promise<boolean> {
    return atomically(this.db, async (trx) => {
      await revokeTokensOf(trx, name);
      const deleted = await trx.deleteFrom('users').where('name', '=', name).executeTakeFirst();
      return deleted.numDeletedRows > 0n;
    });
  }

  async insertToken(token: NewToken): Promise<TokenRecord> {
    const row = {
      user_name: token.user_name,
      token_hash: token.token_hash,
      created_at: now(),
      expires_at: token.expires_at,
      revoked_at: null,
    };
    const { id } = await this.db.insertInto('api_tokens').values(row).returning('id').executeTakeFirstOrThrow();
    return { id, user_name: row.user_name, created_at: row.created_at, expires_at: row.expires_at, revoked_at: null };
  }

  /** The user a token stands for, if the token is known, not revoked, not expired at `at`, and its user exists. */
  async findUserByTokenHash(tokenHash: string, at: string): Promise<UserRecord | undefined> {
    const [row] = await this.tokenHolder(tokenHash, at);
    return row && decodeUser(row);
  }

  async listTokens(user?: string): Promise<TokenRecord[]> {
    let query = this.db.selectFrom('api_tokens').select(TOKEN_COLUMNS).orderBy('id');
    if (user !== undefined) query = query.where('user_name', '=', user);
    return query.execute();
  }

  /** Revokes a token; false when there is no such token or it was revoked already. */
  async revokeToken(id: number): Promise<boolean> {
    const updated = await this.db
      .updateTable('api_tokens')
      .set({ revoked_at: now() })
      .where('id', '=', id)
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    return updated.numUpdatedRows > 0n;
  }

  async revokeTokensOf(user: string): Promise<void> {
    await revokeTokensOf(this.db, user);
  }
}
