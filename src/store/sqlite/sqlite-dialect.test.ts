import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { Store } from '../store.js';
import { sqliteDialect } from './sqlite-dialect.js';

describe('the SQLite dialect', () => {
  it('a transaction SQLite rolled back itself fails with its own error, not "no transaction is active"', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vtpm-sqlite-'));
    const path = join(dir, 'vtpm.sqlite');
    const store = await Store.open(sqliteDialect(path));
    try {
      // RAISE(ROLLBACK) ends the transaction inside SQLite, as SQLITE_FULL or SQLITE_BUSY in a transaction do.
      const other = new Database(path);
      other.exec(
        "CREATE TRIGGER injected BEFORE INSERT ON settings BEGIN SELECT RAISE(ROLLBACK, 'disk full (injected)'); END",
      );
      other.close();
      await assert.rejects(
        store.transaction((inside) => inside.settings.setOnce('k', 'v')),
        /disk full \(injected\)/,
      );
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a database locked past the busy timeout is a 503 database_unavailable, not an internal error', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vtpm-sqlite-'));
    const path = join(dir, 'vtpm.sqlite');
    const store = await Store.open(sqliteDialect(path, { busyTimeoutMs: 50 }));
    const other = new Database(path);
    try {
      other.exec('BEGIN EXCLUSIVE');
      await assert.rejects(store.settings.setOnce('k', 'v'), {
        code: 'database_unavailable',
        status: 503,
        message: /is locked by another process \(SQLITE_BUSY/,
      });
      other.exec('ROLLBACK');
      assert.equal(await store.settings.setOnce('k', 'v'), 'v');
    } finally {
      other.close();
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
