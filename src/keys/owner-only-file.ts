/**
 * Reading a credential from a file, apart from the other file helpers: the libvirt hook reads its token with it
 * on every call libvirtd waits for, and loads nothing it does not use.
 */
import { readFile, stat } from 'node:fs/promises';
import { InvalidArgumentError } from '../errors.js';

/**
 * A credential's file (a PIN, an agent token): refused when others may read
 * it, or when it is empty; `option` names the flag that gave the path.
 */
export async function readOwnerOnlyFile(path: string, option: string, holding: string): Promise<string> {
  const stats = await stat(path).catch(() => {
    throw new InvalidArgumentError(option, `a readable file holding ${holding}`, path);
  });
  // A FIFO or a device would be read until someone writes to it, or forever.
  if (!stats.isFile()) throw new InvalidArgumentError(option, `a regular file holding ${holding}`, path);
  const { mode } = stats;
  if (mode & 0o077) {
    const modeShown = (mode & 0o777).toString(8);
    throw new InvalidArgumentError(option, `a file only its owner can read (chmod 600 ${path}); it is ${modeShown}`);
  }
  const content = (await readFile(path, 'utf8')).replace(/\r?\n$/, '');
  if (!content.trim()) throw new InvalidArgumentError(option, `a file holding ${holding}; it is empty`, path);
  return content;
}
