/**
 * The embedded store's files are the owner's only: SQLite gives the `-wal`
 * and `-shm` files the database file's mode, and they hold every row (audit
 * log, token hashes, wrapped secrets) before a checkpoint.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Sqlite from 'better-sqlite3';
import { openEmbeddedStore } from './index.js';

const FILES = ['vtpm.sqlite', 'vtpm.sqlite-wal', 'vtpm.sqlite-shm'];
const roots: string[] = [];
let umask: number;

before(() => {
  // The usual umask: files SQLite creates on its own would be 0644.
  umask = process.umask(0o022);
});
after(async () => {
  process.umask(umask);
  await Promise.all(roots.map((root) => rm(root, { recursive: true, force: true })));
});

async function dataDir(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'vtpm-embedded-store-test-'));
  roots.push(root);
  return root;
}

async function modes(dir: string): Promise<Record<string, string>> {
  const result: Record<string, string> = {};
  for (const file of FILES) result[file] = ((await stat(join(dir, file))).mode & 0o777).toString(8);
  return result;
}

const OWNER_ONLY = Object.fromEntries(FILES.map((file) => [file, '600']));

describe('openEmbeddedStore', () => {
  it('creates the database, its WAL and its shared-memory file 0600', async () => {
    const dir = await dataDir();
    const store = await openEmbeddedStore(dir);
    try {
      await store.settings.setOnce('probe', 'value');
      assert.deepEqual(await modes(dir), OWNER_ONLY);
    } finally {
      await store.close();
    }
  });

  it('narrows the files of a database an earlier version left readable by others', async () => {
    const dir = await dataDir();
    // An earlier version's database, still open elsewhere so its WAL and SHM files stay.
    const earlier = new Sqlite(join(dir, 'vtpm.sqlite'));
    earlier.pragma('journal_mode = WAL');
    earlier.exec('CREATE TABLE earlier (x); INSERT INTO earlier VALUES (1)');
    try {
      assert.deepEqual(await modes(dir), Object.fromEntries(FILES.map((file) => [file, '644'])));
      const store = await openEmbeddedStore(dir);
      try {
        assert.deepEqual(await modes(dir), OWNER_ONLY);
      } finally {
        await store.close();
      }
    } finally {
      earlier.close();
    }
  });
});
