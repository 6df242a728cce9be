/**
 * The check both re-wrapping key managers share: a rotation that starts while
 * stores, reads and deletes are under way waits for them, and what starts
 * after it waits for it; every secret reads back, after the rotation and
 * after the key manager is opened again.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { KeyManager } from '../key-manager.js';

/** `existing`: six secrets stored before, with their values; `at`: after how many stores the rotation starts. */
export async function rotateAmidOperations(
  open: () => Promise<KeyManager>,
  existing: string[],
  existingValues: Buffer[],
  at: number,
): Promise<void> {
  const keys = await open();
  // Large values, so that each store's write and fsync take long enough for a rotation that does not wait for
  // them to list the directory before their files are renamed into it: the window made wide, not made up.
  const values = Array.from({ length: 50 }, () => randomBytes(2 << 20));
  const stores: Promise<string>[] = [];
  const reads: Promise<Buffer>[] = [];
  const deletes: Promise<void>[] = [];
  let rotation: Promise<unknown> | undefined;
  for (const [i, value] of values.entries()) {
    stores.push(keys.storeSecret('', { project: 'p1' }, value));
    if (i < 3) reads.push(keys.readSecret(existing[i]!));
    else if (i < 6) deletes.push(keys.deleteSecret(existing[i]!));
    // The rotation starts while the first stores are writing their files, and before the others start.
    if (i === at) rotation = keys.rotate!();
  }
  const [refs, read] = await Promise.all([Promise.all(stores), Promise.all(reads), Promise.all(deletes), rotation]);
  assert.deepEqual(read, existingValues.slice(0, 3), 'reads under way when the rotation started');
  const check = async (manager: KeyManager, when: string) => {
    for (const [i, ref] of refs.entries()) assert.deepEqual(await manager.readSecret(ref), values[i], `${ref} ${when}`);
    for (const [i, ref] of existing.entries()) {
      if (i < 3) assert.deepEqual(await manager.readSecret(ref), existingValues[i], `${ref} ${when}`);
      else await assert.rejects(manager.readSecret(ref), /does not exist/, `${ref} stays deleted ${when}`);
    }
  };
  await check(keys, 'after the rotation');
  await keys.close();
  const reopened = await open();
  try {
    await check(reopened, 'after reopening');
  } finally {
    await reopened.close();
  }
}
