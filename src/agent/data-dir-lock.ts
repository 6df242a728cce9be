/**
 * One process per data directory: two `vtpm serve` (or `vtpm agent`) on the
 * same directory would both adopt its swtpms and both write its states.
 *
 * The lock is an exclusive transaction on a small SQLite file, held for the
 * process's life: the kernel's file lock under it goes with the process, so
 * a kill -9 leaves no stale lock and a reused pid cannot hold one. A second
 * file names the holder, for the refusal's message (the locked file cannot
 * be read meanwhile).
 */
import { closeSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { HostSetupError } from '../errors.js';
import { writeFileAtomically } from '../keys/files.js';

export interface DataDirLock {
  release(): void;
}

const LOCK_FILE = 'process.lock';
const HOLDER_FILE = 'process.pid';
/** The lock's own files in the data directory, SQLite's journal of the lock file among them. */
export const LOCK_FILES: readonly string[] = [LOCK_FILE, `${LOCK_FILE}-journal`, HOLDER_FILE];

export async function lockDataDir(dataDir: string, what: string): Promise<DataDirLock> {
  const lockFile = join(dataDir, LOCK_FILE);
  const holderFile = join(dataDir, HOLDER_FILE);
  closeSync(openSync(lockFile, 'a', 0o600));
  const db = new Database(lockFile, { timeout: 0 });
  try {
    db.pragma('locking_mode = EXCLUSIVE');
    db.exec('BEGIN EXCLUSIVE');
  } catch (error) {
    db.close();
    if ((error as { code?: string }).code !== 'SQLITE_BUSY') throw error;
    throw new HostSetupError(
      `the data directory ${dataDir} is in use by another process (${holderOf(holderFile)}); ` +
        `stop it first, or give this ${what} a --data-dir of its own`,
      { dataDir },
    );
  }
  await writeFileAtomically(holderFile, Buffer.from(`${process.pid} ${what}\n`));
  return {
    release() {
      rmSync(holderFile, { force: true });
      db.close();
    },
  };
}

function holderOf(holderFile: string): string {
  try {
    const [pid, ...what] = readFileSync(holderFile, 'utf8').trim().split(' ');
    return `${what.join(' ')}, pid ${pid}`;
  } catch {
    return 'its pid unknown';
  }
}
