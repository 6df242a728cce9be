/**
 * A vTPM's working copy on its host: the state directory swtpm runs in
 * (tpm/<vm>/, 0700, owned by swtpm's user, holding the one state file), and a
 * UEFI guest's variable store (nvram/<vm>.fd, shared with QEMU's group). Each
 * start rewrites it from the vault; it is read back only when a guest left
 * changes the control plane did not hear of.
 *
 * Nothing here is synced: the vault holds the truth, and a copy lost with
 * the machine is rewritten by the next start.
 */
import { chmodSync, chownSync, mkdirSync, readdirSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { readFile, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { SystemGroup, SystemUser } from './host-directories.js';

export interface WorkingCopyPlaces {
  stateDir: string;
  stateFile: string;
  nvram: string;
}

export interface WorkingCopyOwners {
  swtpmUser?: SystemUser | undefined;
  qemuGroup?: SystemGroup | undefined;
}

const missing = (error: unknown) => (error as NodeJS.ErrnoException).code === 'ENOENT';

/** `path` removed, whether it was there or not. */
export async function removeFile(path: string): Promise<void> {
  await unlink(path).catch((error: unknown) => {
    if (!missing(error)) throw error;
  });
}

/** Gives QEMU's group read and write access to `path` (a socket, a variable store), when QEMU is not root. */
export function shareWithQemu(path: string, group: SystemGroup | undefined): void {
  if (!group) return;
  chownSync(path, -1, group.gid);
  chmodSync(path, 0o660);
}

/**
 * The state directory as a new launch needs it: the state file and nothing else (a volatile state left
 * by an earlier swtpm would be loaded with it). A directory its user owns already is emptied rather than
 * removed and made again, which spares the usual start a removal, a creation and a change of owner.
 *
 * Synchronous: a few calls on the local disk, microseconds each, where a trip through libuv's thread
 * pool each costs more than the call, and far more while the machine is busy. The database the same
 * data directory holds is written synchronously too.
 */
function prepareStateDir(places: WorkingCopyPlaces, state: Buffer, user: SystemUser | undefined): void {
  const { stateDir, stateFile } = places;
  const owner = statSync(stateDir, { throwIfNoEntry: false })?.uid;
  if (owner !== undefined && owner === (user?.uid ?? process.getuid?.())) {
    for (const entry of readdirSync(stateDir, { withFileTypes: true })) {
      const path = join(stateDir, entry.name);
      if (entry.isDirectory()) rmSync(path, { recursive: true });
      else unlinkSync(path);
    }
  } else {
    rmSync(stateDir, { recursive: true, force: true });
    mkdirSync(stateDir, { mode: 0o700 });
    if (user) chownSync(stateDir, user.uid, user.gid);
  }
  const path = join(stateDir, stateFile);
  // Always a new file ('wx' does not follow a link): nothing swtpm's user left there is written through as root.
  writeFileSync(path, state, { mode: 0o600, flag: 'wx' });
  if (user) chownSync(path, user.uid, user.gid);
}

/** Writes the working copy a launch starts from: the vault's state, and a UEFI guest's variable store. */
export function prepareWorkingCopy(
  places: WorkingCopyPlaces,
  owners: WorkingCopyOwners,
  state: Buffer,
  nvram: Buffer | undefined,
): void {
  prepareStateDir(places, state, owners.swtpmUser);
  if (nvram === undefined) {
    rmSync(places.nvram, { force: true });
    return;
  }
  writeFileSync(places.nvram, nvram, { mode: 0o600 });
  shareWithQemu(places.nvram, owners.qemuGroup);
}

/** What a guest left on the host, of each kind that is there. */
export async function readWorkingCopy(places: WorkingCopyPlaces): Promise<{ tpm?: Buffer; nvram?: Buffer }> {
  const read = (path: string) => readFile(path).catch(() => undefined);
  const tpm = await read(join(places.stateDir, places.stateFile));
  const nvram = await read(places.nvram);
  return { ...(tpm && { tpm }), ...(nvram && { nvram }) };
}

export async function removeWorkingCopy(places: Omit<WorkingCopyPlaces, 'stateFile'>): Promise<void> {
  await rm(places.stateDir, { recursive: true, force: true });
  await removeFile(places.nvram);
}
