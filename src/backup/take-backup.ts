/**
 * A backup of the running deployment, taken by the service itself so that it
 * is consistent: while the key manager lets no secret be stored, read,
 * deleted or rotated, the database is copied at one instant through SQLite's
 * online backup, then the key manager's files, the CA's (under swtpm_localca's
 * own lock) and the admin token are read. A vTPM created, deleted or re-keyed
 * meanwhile is in the copy either whole or not at all; running vTPMs keep
 * syncing (their vault keys are in memory), and their newest states are the
 * copy's generations.
 *
 * Left out on purpose: swtpm's working copies (tpm/, nvram/), which a start
 * rewrites from the vault's newest generation, the run directory, logs and
 * the data directory's lock.
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import Database from 'better-sqlite3';
import { adminTokenPath } from '../auth/admin-token-path.js';
import { enforceOnDeployment, type Principal } from '../auth/policy.js';
import { StateConflictError } from '../errors.js';
import type { KeyFile } from '../keys/key-manager.js';
import { readIfExists } from '../keys/files.js';
import { withWiped } from '../keys/wiped.js';
import type { ControlPlane } from '../orchestration/control-plane.js';
import { embeddedDatabase } from '../store/index.js';
import { authorityFiles } from '../swtpm/certificate-authority.js';
import { checkPassphrase } from '../keys/passphrase-envelope.js';
import { archive, type BackupFile, sealBackup } from './archive.js';

/** The most pages SQLite's backup copies in one step: the whole database, so that it is read at one instant. */
const EVERY_PAGE = 0x7fffffff;

/** The online backup's copy, read back; the copy is written beside the database and removed. */
async function copyDatabase(dataDir: string): Promise<{ file: BackupFile; migrations: string[] }> {
  // A name that vtpm serve's start-up removes should this process die before it does.
  const copy = join(dataDir, `vtpm.sqlite.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  await (await open(copy, 'wx', 0o600)).close();
  try {
    const source = new Database(embeddedDatabase(dataDir), { fileMustExist: true });
    try {
      await source.backup(copy, { progress: () => EVERY_PAGE });
    } finally {
      source.close();
    }
    const copied = new Database(copy, { readonly: true });
    let migrations: string[];
    try {
      migrations = copied.prepare('select name from kysely_migration order by name').pluck().all() as string[];
    } finally {
      copied.close();
    }
    return { file: { path: basename(embeddedDatabase(dataDir)), data: await readFile(copy) }, migrations };
  } finally {
    await rm(copy, { force: true });
  }
}

export interface DeploymentBackup {
  backup: Buffer;
  files: number;
}

export async function backupDeployment(
  cp: ControlPlane,
  passphrase: string,
  actor: Principal,
): Promise<DeploymentBackup> {
  enforceOnDeployment(actor, 'backup');
  if (!cp.store.isEmbedded)
    throw new StateConflictError(
      `vtpm backup copies the embedded SQLite database, and this deployment's is ${cp.store.description}: ` +
        "back that up with PostgreSQL's own tools (continuous WAL archiving and pg_basebackup; " +
        'docs/operations.md), and the data directory (keys, CA) with them',
    );
  checkPassphrase(passphrase);
  let files = 0;
  const collect = async (keyFiles: KeyFile[]): Promise<Buffer> => {
    const database = await copyDatabase(cp.dataDir);
    const adminToken = await readIfExists(adminTokenPath(cp.dataDir));
    const all = [
      database.file,
      ...keyFiles,
      ...(await authorityFiles(join(cp.dataDir, 'ca'), 'ca')),
      ...(adminToken ? [{ path: basename(adminTokenPath(cp.dataDir)), data: adminToken }] : []),
    ];
    files = all.length;
    const manifest = {
      created_at: new Date().toISOString(),
      key_manager: cp.keys.kind,
      migrations: database.migrations,
    };
    return archive(manifest, all);
  };
  const unsealed = await (cp.keys.backup ? cp.keys.backup(collect) : collect([]));
  // Sealed once the key manager is free again: the key derivation takes a noticeable fraction of a second.
  const backup = await withWiped(unsealed, (plaintext) => sealBackup(plaintext, passphrase));
  return { backup, files };
}
