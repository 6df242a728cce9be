/** A vTPM's vault key, derived from its secret, for the duration of one use. */
import type { KeyManager } from '../keys/key-manager.js';
import { withSecret, withWiped } from '../keys/wiped.js';
import { vaultKeyFrom } from './state-vault.js';

export function withVaultKey<T>(
  keys: KeyManager,
  secretRef: string,
  use: (vaultKey: Buffer) => Promise<T>,
): Promise<T> {
  return withSecret(keys, secretRef, (secret) => withWiped(vaultKeyFrom(secret), use));
}
