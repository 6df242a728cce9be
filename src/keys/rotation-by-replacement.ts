/**
 * Key rotation for key managers whose key-encryption keys are their own
 * (Barbican): vtpm-manager cannot re-wrap inside them, so every secret is
 * stored anew (under the key manager's current keys, in its owner's
 * project), every place that names it is pointed at the new one, and the old
 * one is deleted. Values are unchanged, so no vTPM notices.
 *
 * Each replacement is journalled (secret_replacements) between storing the
 * new secret and deleting the old one; a rotation interrupted there is
 * finished when the service starts again, or by the next rotation.
 */
import type { KeyManager, RotationReport } from './index.js';
import { withSecret } from './wiped.js';
import type { SecretUse, Store } from '../store/index.js';

export async function rotateByReplacement(store: Store, keys: KeyManager): Promise<RotationReport> {
  const finished = await finishSecretReplacements(store, keys);
  let replaced = 0;
  for (const use of await store.secrets.listUses()) {
    await withSecret(keys, use.ref, (secret) => storeAnew(store, keys, use, secret));
    replaced += 1;
  }
  return { kind: keys.kind, rewrapped: replaced, already_rewrapped: finished };
}

/**
 * Stores `secret` (the value behind `use.ref`) as a new secret with the use's
 * label and project, and retires the old one; returns the new reference.
 */
export async function storeAnew(store: Store, keys: KeyManager, use: SecretUse, secret: Buffer): Promise<string> {
  const newRef = await keys.storeSecret(use.label, { project: use.project }, secret);
  await store.secrets.recordReplacement(use.ref, newRef);
  await complete(store, keys, use.ref, newRef);
  return newRef;
}

/** Completes journalled replacements; returns how many there were. */
export async function finishSecretReplacements(store: Store, keys: KeyManager): Promise<number> {
  const pending = await store.secrets.listReplacements();
  for (const { old_ref, new_ref } of pending) await complete(store, keys, old_ref, new_ref);
  return pending.length;
}

async function complete(store: Store, keys: KeyManager, oldRef: string, newRef: string): Promise<void> {
  const moved = await store.secrets.replaceRef(oldRef, newRef);
  // Nothing moved and nothing names the new secret: its vTPM was deleted meanwhile, and the new copy goes too.
  if (moved === 0 && !(await store.secrets.isInUse(newRef))) await keys.deleteSecret(newRef);
  await keys.deleteSecret(oldRef);
  await store.secrets.forgetReplacement(oldRef);
}
