/**
 * Restores a deployment backup onto a data directory, offline: under the
 * directory's lock, so that no `vtpm serve` or `vtpm agent` runs on it
 * meanwhile. The whole backup is authenticated and checked before anything
 * is written; a directory that holds anything is replaced only when asked
 * to (and the caller has confirmed it), since that is a destructive action.
 *
 * The restored deployment's vTPMs start from the vault (the database's
 * generations); their hosts' working copies are not in a backup and need
 * not be.
 */
import { readdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { LOCK_FILES, lockDataDir } from '../agent/data-dir-lock.js';
import { StateConflictError } from '../errors.js';
import { makeDirectoryDurably, writeFileAtomically } from '../keys/files.js';
import { withWiped } from '../keys/wiped.js';
import { requireKnownSchema } from '../store/index.js';
import { type BackupManifest, openBackup } from './archive.js';

export interface RestoreOptions {
  /** Replace what the directory holds. */
  force: boolean;
  /** Asked before anything is replaced; throws to refuse. */
  confirm: (question: string) => Promise<void>;
}

export interface Restored extends BackupManifest {
  data_dir: string;
  files: number;
}

async function entriesOf(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((name) => !LOCK_FILES.includes(name));
}

export async function restoreBackup(
  file: Buffer,
  passphrase: string,
  dataDir: string,
  options: RestoreOptions,
): Promise<Restored> {
  const opened = await openBackup(file, passphrase);
  return withWiped(opened.unsealed, async () => {
    requireKnownSchema(opened.manifest.migrations, 'the backup');
    await makeDirectoryDurably(dataDir, 0o700);
    const lock = await lockDataDir(dataDir, 'vtpm backup restore');
    try {
      const present = await entriesOf(dataDir);
      if (present.length > 0) {
        if (!options.force)
          throw new StateConflictError(
            `the data directory ${dataDir} is not empty (${present.slice(0, 5).join(', ')}` +
              `${present.length > 5 ? ', ...' : ''}): restore onto a fresh directory, ` +
              'or pass --force to replace everything it holds',
            { dataDir },
          );
        await options.confirm(`replace everything in ${dataDir} with the backup of ${opened.manifest.created_at}?`);
        for (const name of present) await rm(join(dataDir, name), { recursive: true, force: true });
      }
      for (const { path, data } of opened.files) {
        const target = join(dataDir, path);
        await makeDirectoryDurably(dirname(target), 0o700);
        await writeFileAtomically(target, data);
      }
    } finally {
      lock.release();
    }
    return { ...opened.manifest, data_dir: dataDir, files: opened.files.length };
  });
}
