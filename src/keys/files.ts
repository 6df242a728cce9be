/** File helpers the key managers that keep wrapped keys in the data directory share. */
import { access, open as openFile, readFile, rename } from 'node:fs/promises';

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
