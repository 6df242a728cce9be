/**
 * The directories a host agent works in, made and owned so that swtpm (as
 * its unprivileged user) and QEMU (in its group) can reach exactly what they
 * need; checked at start, with an error naming the directory that stops them.
 */
import { chmod, chown, mkdir, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { EmulatorError, HostSetupError } from '../errors.js';

export interface SystemUser {
  name: string;
  uid: number;
  gid: number;
}

export interface SystemGroup {
  name: string;
  gid: number;
  /** What to change instead when QEMU cannot reach the directories (the setting this group came from). */
  remedy?: string | undefined;
}

/**
 * Fails, naming the directory, if `who` (a user, or any member of a
 * group) could not pass through `dir` and every directory above it.
 */
async function requireTraversable(
  dir: string,
  who: { uid?: number; gid: number; description: string; remedy: string },
): Promise<void> {
  for (let current = resolve(dir); ; current = dirname(current)) {
    const { mode, uid, gid } = await stat(current);
    const may = uid === who.uid ? mode & 0o100 : gid === who.gid ? mode & 0o010 : mode & 0o001;
    if (!may) {
      throw new HostSetupError(
        `${who.description} cannot pass through ${current} (mode ${(mode & 0o777).toString(8)}): ` +
          `let it (chmod o+x ${current}), choose other directories, or ${who.remedy}`,
        { directory: current },
      );
    }
    if (current === dirname(current)) return;
  }
}

/** Unix socket paths are limited to 107 bytes by the kernel. */
const MAX_SOCKET_PATH = 107;
const UUID_LENGTH = 36;

export interface HostDirectories {
  dataDir: string;
  runDir: string;
  scratchDir: string;
  swtpmUser?: SystemUser | undefined;
  qemuGroup?: SystemGroup | undefined;
}

export async function prepareHostDirectories(dirs: HostDirectories): Promise<void> {
  const socketLength = join(dirs.runDir, `${'0'.repeat(UUID_LENGTH)}.sock`).length;
  if (socketLength > MAX_SOCKET_PATH) {
    throw new EmulatorError(
      `run directory ${dirs.runDir} is too long for unix socket paths ` +
        `(${socketLength} > ${MAX_SOCKET_PATH} bytes): pass a shorter --run-dir`,
    );
  }
  for (const dir of ['tpm', 'nvram', 'log'].map((d) => join(dirs.dataDir, d)).concat(dirs.runDir, dirs.scratchDir)) {
    await mkdir(dir, { recursive: true, mode: 0o700 });
  }
  const user = dirs.swtpmUser;
  if (user) {
    // swtpm creates its socket and pid file, and writes its state, after it has become this user:
    // the run directory is its, each state directory too; the directories above let it pass, not look.
    await chown(dirs.runDir, user.uid, user.gid);
    for (const dir of [dirs.dataDir, join(dirs.dataDir, 'tpm')]) await chmod(dir, 0o711);
    const swtpm = { ...user, description: `swtpm runs as ${user.name}, which`, remedy: 'pass --swtpm-user root' };
    for (const dir of [dirs.runDir, join(dirs.dataDir, 'tpm')]) await requireTraversable(dirname(dir), swtpm);
  }
  const group = dirs.qemuGroup;
  if (group) {
    const nvramDir = join(dirs.dataDir, 'nvram');
    for (const dir of [dirs.runDir, nvramDir]) {
      await chown(dir, -1, group.gid);
      await chmod(dir, 0o710);
    }
    await chmod(dirs.dataDir, 0o711);
    const qemu = {
      gid: group.gid,
      description: `QEMU, in group ${group.name},`,
      remedy: group.remedy ?? 'run QEMU as root and pass --qemu-group root',
    };
    for (const dir of [dirs.runDir, nvramDir]) await requireTraversable(dirname(dir), qemu);
  }
}
