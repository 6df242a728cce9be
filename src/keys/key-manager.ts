/**
 * The key manager holds every per-vTPM secret. Callers keep only an opaque
 * reference; the secret itself is fetched when needed and kept in memory
 * only. Deleting the secret is the crypto-erase of everything sealed under it.
 *
 * Backends (local today; PKCS#11 and Barbican behind the same interface) live
 * in their own folders; nothing outside src/keys knows which one is in use.
 */
export interface SecretOwner {
  /** Who the secret belongs to, for backends that scope secrets (Barbican projects). */
  project: string;
}

export interface RotationReport {
  kind: string;
  rewrapped: number;
  /** Found re-wrapped already: the rest of an interrupted rotation. */
  already_rewrapped: number;
}

export interface KeyManager {
  /** Short name of the backend, for `vtpm hosts` and logs. */
  readonly kind: string;
  /** Generates a fresh 32-byte secret inside the key manager and returns its reference. */
  createSecret(label: string, owner: SecretOwner): Promise<string>;
  /** Stores a secret that already exists elsewhere (an imported vTPM's) and returns its reference. */
  storeSecret(label: string, owner: SecretOwner, secret: Buffer): Promise<string>;
  readSecret(ref: string): Promise<Buffer>;
  /** Idempotent: deleting an already-deleted secret succeeds. */
  deleteSecret(ref: string): Promise<void>;
  /**
   * A new key-encryption key; every secret is re-wrapped under it, values
   * unchanged, then the old key is destroyed. An interrupted rotation is
   * finished when the key manager opens again.
   */
  rotate(): Promise<RotationReport>;
  close(): Promise<void>;
}
