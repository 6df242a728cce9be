/** File helpers for key material and credentials kept in files. */
import { randomBytes } from 'node:crypto';
import { access, mkdir, open as openFile, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';

/**
 * Durable once it resolves, and never half written: the content goes to a new
 * 0600 file beside `path`, which is synced, renamed over `path`, and then the
 * directory is synced, without which a power loss can undo the rename. Whatever
 * `path` held before is replaced, never overwritten in place.
 */
export async function writeFileAtomically(path: string, content: Buffer): Promise<void> {
  const temporary = `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  // 'wx': a file of that name (a symbolic link, another writer's) is an error, not something to write through.
  const handle = await openFile(temporary, 'wx', 0o600);
  try {
    try {
      await handle.writeFile(content);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temporary, path);
  } catch (error) {
    await unlink(temporary).catch(() => undefined);
    throw error;
  }
  await syncDirectory(dirname(path));
}

/** Makes the names created, renamed or removed in `dir` durable. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await openFile(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** `mkdir -p` whose new directories survive a power loss: the parent of each one it created is synced. */
export async function makeDirectoryDurably(path: string, mode: number): Promise<void> {
  const first = await mkdir(path, { recursive: true, mode });
  if (first === undefined) return;
  const stop = dirname(first);
  for (let dir = path; dir !== stop; ) {
    dir = dirname(dir);
    await syncDirectory(dir);
  }
}

/**
 * Destroys a file of key material that nothing refers to any more: its bytes
 * are overwritten with random ones and synced, then the file is removed and
 * the removal made durable. Only for a file no longer referenced: overwriting
 * a key still in use would lose everything sealed under it.
 */
export async function destroyFile(path: string): Promise<void> {
  const handle = await openFile(path, 'r+').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (!handle) return;
  try {
    const { size } = await handle.stat();
    await handle.write(randomBytes(size), 0, size, 0);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await unlink(path);
  await syncDirectory(dirname(path));
}

export const fileExists = (path: string) =>
  access(path).then(
    () => true,
    () => false,
  );

/** A temporary file left by an interrupted writeFileAtomically. */
export const isTemporary = (name: string) => name.includes('.tmp-');

/**
 * Removes what writeFileAtomically left in `dir` when its process died between writing and renaming: without
 * this, each crash would leave a file behind for good. A file of a live process is its write under way.
 */
export async function removeLeftoverTemporaries(dir: string): Promise<void> {
  for (const name of await readdir(dir)) {
    const pid = Number(/\.tmp-(\d+)-[0-9a-f]+$/.exec(name)?.[1]);
    if (!pid || isAlive(pid)) continue;
    await unlink(join(dir, name)).catch(() => undefined);
  }
}

function isAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * The files of `dir`, each named by its path under `base`, for a backup: not its temporaries, nor hidden files
 * (locks).
 */
export async function filesOf(dir: string, base: string): Promise<Array<{ path: string; data: Buffer }>> {
  const names = (await readdir(dir)).filter((name) => !isTemporary(name) && !name.startsWith('.')).sort();
  return Promise.all(names.map(async (name) => ({ path: join(base, name), data: await readFile(join(dir, name)) })));
}

export async function readIfExists(path: string): Promise<Buffer | undefined> {
  return readFile(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
}
