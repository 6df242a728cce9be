/**
 * The storage faults of a scenario: the control plane's data directory on a
 * small tmpfs of its own that can be filled up, and its database held by
 * another connection's exclusive transaction. (Needs root, as the suite does.)
 */
import { execFile } from 'node:child_process';
import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';

const exec = promisify(execFile);

/** A tmpfs mounted on `dir` (swtpm's user may pass through it, as through the data directory it holds). */
export async function mountTmpfs(dir: string, sizeMiB: number): Promise<void> {
  await exec('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,mode=0711`, 'tmpfs', dir]);
}

/** Unmounts, lazily when something still has a file open there (a killed process's children). */
export async function unmount(dir: string): Promise<void> {
  await exec('umount', [dir]).catch(() => exec('umount', ['-l', dir]));
}

const CHUNK = Buffer.alloc(4 * 1024 * 1024);

/** Writes a file in `dir` until its file system has no space left; returns the file, to be removed. */
export async function fillUp(dir: string): Promise<string> {
  const file = join(dir, 'fault-filler');
  const handle = await open(file, 'w');
  try {
    for (;;) {
      const { bytesWritten } = await handle.write(CHUNK);
      if (bytesWritten === 0) break;
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
  } finally {
    await handle.close();
  }
  return file;
}

export async function free(file: string): Promise<void> {
  await rm(file, { force: true });
}

/**
 * Takes the database's write lock with an exclusive transaction of another connection, as another
 * process (a backup, an operator's sqlite3 shell) would; `release` ends it. Readers go on (WAL).
 */
export function lockDatabase(dataDir: string): { release(): void } {
  const db = new Database(join(dataDir, 'vtpm.sqlite'), { timeout: 15_000 });
  try {
    db.exec('BEGIN EXCLUSIVE');
  } catch (error) {
    db.close();
    throw error;
  }
  return {
    release() {
      db.exec('ROLLBACK');
      db.close();
    },
  };
}
