/** File helpers for key material and credentials kept in files. */
import { access, open as openFile, readFile, rename, stat } from 'node:fs/promises';
import { InvalidArgumentError } from '../errors.js';

/** Written to a temporary file, synced, then renamed over: a crash never leaves half a key. */
export async function writeFileAtomically(path: string, content: Buffer): Promise<void> {
  const temporary = `${path}.tmp-${process.pid}`;
  const handle = await openFile(temporary, 'w', 0o600);
  try {
    await handle.writeFile(content);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temporary, path);
}

export const fileExists = (path: string) =>
  access(path).then(
    () => true,
    () => false,
  );

/** A temporary file left by an interrupted writeFileAtomically. */
export const isTemporary = (name: string) => name.includes('.tmp-');

export async function readIfExists(path: string): Promise<Buffer | undefined> {
  return readFile(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
}

/**
 * A credential's file (a PIN, an agent token): refused when others may read
 * it, or when it is empty; `option` names the flag that gave the path.
 */
export async function readOwnerOnlyFile(path: string, option: string, holding: string): Promise<string> {
  const { mode } = await stat(path).catch(() => {
    throw new InvalidArgumentError(option, `a readable file holding ${holding}`, path);
  });
  if (mode & 0o077) {
    const modeShown = (mode & 0o777).toString(8);
    throw new InvalidArgumentError(option, `a file only its owner can read (chmod 600 ${path}); it is ${modeShown}`);
  }
  const content = (await readFile(path, 'utf8')).replace(/\r?\n$/, '');
  if (!content.trim()) throw new InvalidArgumentError(option, `a file holding ${holding}; it is empty`, path);
  return content;
}
