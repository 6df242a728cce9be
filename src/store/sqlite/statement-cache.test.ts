import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { StatementCache } from './statement-cache.js';

let dir: string;
let path: string;
let db: Database.Database;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vtpm-statements-'));
  path = join(dir, 'db.sqlite');
  db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.exec('CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (1), (2)');
});
afterEach(async () => {
  if (db.open) db.close();
  await rm(dir, { recursive: true, force: true });
});

describe('the statement cache', () => {
  it('prepares a statement once per SQL text, and a different text on its own', () => {
    const cache = new StatementCache(db);
    const first = cache.prepare('SELECT a FROM t WHERE a = ?');
    assert.equal(cache.prepare('SELECT a FROM t WHERE a = ?'), first);
    const other = cache.prepare('SELECT a * 10 AS a FROM t WHERE a = ?');
    assert.notEqual(other, first);
    assert.deepEqual(first.all([2]), [{ a: 2 }]);
    assert.deepEqual(other.all([2]), [{ a: 20 }]);
    assert.deepEqual(first.all([1]), [{ a: 1 }]);
  });

  it('answers with the columns a migration added, run through it or by another connection', () => {
    const cache = new StatementCache(db);
    assert.deepEqual(cache.prepare('SELECT * FROM t ORDER BY a').all([]), [{ a: 1 }, { a: 2 }]);
    cache.prepare('ALTER TABLE t ADD COLUMN b INTEGER DEFAULT 7').run([]);
    assert.equal(cache.size, 0, 'a schema change empties the cache');
    assert.deepEqual(cache.prepare('SELECT * FROM t ORDER BY a').all([]), [
      { a: 1, b: 7 },
      { a: 2, b: 7 },
    ]);
    const other = new Database(path);
    other.exec('ALTER TABLE t ADD COLUMN c TEXT DEFAULT "x"');
    other.close();
    assert.deepEqual(cache.prepare('SELECT * FROM t ORDER BY a').all([])[0], { a: 1, b: 7, c: 'x' });
  });

  it('keeps at most its capacity, dropping the statement used least recently', () => {
    const cache = new StatementCache(db, 2);
    const one = cache.prepare('SELECT 1');
    cache.prepare('SELECT 2');
    cache.prepare('SELECT 1');
    cache.prepare('SELECT 3');
    assert.equal(cache.size, 2);
    assert.equal(cache.prepare('SELECT 1'), one, 'the one used again stays');
  });

  it('forgets its statements when the database closes', () => {
    const cache = new StatementCache(db);
    cache.prepare('SELECT a FROM t');
    cache.close();
    assert.equal(cache.size, 0);
    assert.equal(db.open, false);
  });
});
