/**
 * Whether fuzzed input reached the file system: a search for the run's
 * canary (every traversal and shell payload names it), and a listing of the
 * work directory around the data directory, which nothing but the test
 * writes to.
 */
import { lstat, readdir } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { CANARY } from './hostile.js';

/** Paths under `roots` (to `depth` levels, symbolic links not followed) whose name holds the canary. */
export async function canaryPaths(roots: string[], depth = 6): Promise<string[]> {
  const found: string[] = [];
  const walk = async (dir: string, left: number): Promise<void> => {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const entry of entries) {
      const path = join(dir, entry.name);
      if (entry.name.includes(CANARY)) found.push(path);
      if (entry.isDirectory() && left > 0) await walk(path, left - 1);
    }
  };
  for (const root of roots) {
    if (root.includes(CANARY)) found.push(root);
    await walk(root, depth);
  }
  return found;
}

/** Every path under `dir` except those under `skip` (relative paths, sorted). */
export async function listing(dir: string, skip: string[] = []): Promise<string[]> {
  const paths: string[] = [];
  const walk = async (current: string): Promise<void> => {
    for (const entry of await readdir(current, { withFileTypes: true })) {
      const path = join(current, entry.name);
      if (skip.includes(path)) continue;
      paths.push(relative(dir, path));
      if (entry.isDirectory() && !(await lstat(path)).isSymbolicLink()) await walk(path);
    }
  };
  await walk(dir);
  return paths.sort();
}
