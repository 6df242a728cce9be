import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { SchemaTooNewError } from '../errors.js';
import { sqliteDialect } from './sqlite/sqlite-dialect.js';
import { Store } from './store.js';

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vtpm-migrations-'));
});
after(() => rm(dir, { recursive: true, force: true }));

async function opened(path: string): Promise<string[]> {
  const applied: string[] = [];
  await (await Store.open(sqliteDialect(path), (migration) => applied.push(migration))).close();
  return applied;
}

describe('migrations at open', () => {
  it('tell of each migration they run, in order, and of none once the schema is current', async () => {
    const path = join(dir, 'fresh.sqlite');
    const applied = await opened(path);
    assert.ok(applied.length >= 8, `every migration runs on a fresh database (${applied.join(', ')})`);
    assert.equal(applied[0], '0001_initial');
    assert.deepEqual([...applied].sort(), applied, 'in the order of their versions');
    assert.deepEqual(await opened(path), []);
  });

  it("refuse a database a newer version migrated, naming the schema version found and this program's", async () => {
    const path = join(dir, 'downgraded.sqlite');
    const known = (await opened(path)).at(-1)!;
    const sqlite = new Database(path);
    sqlite
      .prepare('insert into kysely_migration (name, timestamp) values (?, ?)')
      .run('0099_from_a_newer_version', new Date().toISOString());
    sqlite.close();
    await assert.rejects(Store.open(sqliteDialect(path)), (error: unknown) => {
      assert.ok(error instanceof SchemaTooNewError);
      assert.equal(error.code, 'schema_too_new');
      const knownVersion = Number.parseInt(known, 10);
      assert.match(
        error.message,
        new RegExp(
          `^the database has schema version 99 \\(0099_from_a_newer_version\\), newer than this vtpm-manager ` +
            `knows \\(version ${knownVersion}, ${known}\\)`,
        ),
      );
      assert.deepEqual(error.details, {
        found: { version: 99, migration: '0099_from_a_newer_version' },
        known: { version: knownVersion, migration: known },
      });
      return true;
    });
  });
});
