/**
 * Secrets in memory are zeroed as soon as their use ends, whatever way it
 * ends: every buffer that holds key material goes through one of these
 * helpers instead of a hand-placed `fill(0)` that a failure path can miss.
 */
import type { KeyManager } from './key-manager.js';

/** Zeroes a key whose holder lets go of it (a master key at close or after a rotation). */
export function wipe(secret: Buffer): void {
  secret.fill(0);
}

/** Runs `use` with `secret`, then zeroes it. */
export async function withWiped<T>(secret: Buffer, use: (secret: Buffer) => Promise<T> | T): Promise<T> {
  try {
    return await use(secret);
  } finally {
    secret.fill(0);
  }
}

/** The same for synchronous uses (key derivation, sealing). */
export function withWipedSync<T>(secret: Buffer, use: (secret: Buffer) => T): T {
  try {
    return use(secret);
  } finally {
    secret.fill(0);
  }
}

/** Every buffer handed to `keep` is zeroed when `use` ends: for secrets obtained part-way through an operation. */
export async function withKeptSecrets<T>(use: (keep: (secret: Buffer) => Buffer) => Promise<T>): Promise<T> {
  const kept: Buffer[] = [];
  try {
    return await use((secret) => {
      kept.push(secret);
      return secret;
    });
  } finally {
    for (const secret of kept) secret.fill(0);
  }
}

/** Reads a secret from the key manager for the duration of `use`. */
export async function withSecret<T>(
  keys: KeyManager,
  ref: string,
  use: (secret: Buffer) => Promise<T> | T,
): Promise<T> {
  return withWiped(await keys.readSecret(ref), use);
}
