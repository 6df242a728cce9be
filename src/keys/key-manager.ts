/**
 * The key manager holds every per-vTPM secret. Callers keep only an opaque
 * reference; the secret itself is fetched when needed and kept in memory
 * only. Deleting the secret is the crypto-erase of everything sealed under it.
 *
 * Backends (local, PKCS#11, Barbican) live in their own folders; nothing
 * outside src/keys knows which one is in use.
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

/** A file the key manager keeps in the data directory, as a backup of the deployment holds it. */
export interface KeyFile {
  /** Relative to the data directory. */
  path: string;
  data: Buffer;
}

export interface KeyManager {
  /** Short name of the backend, for `vtpm hosts` and logs. */
  readonly kind: string;
  /**
   * Secrets live in their owner's scope (Barbican: the project). A secret
   * made ahead for the provisioning pool is then stored anew in the owner's
   * scope when a vTPM claims it.
   */
  readonly ownerScoped: boolean;
  /** Generates a fresh 32-byte secret inside the key manager and returns its reference. */
  createSecret(label: string, owner: SecretOwner): Promise<string>;
  /** Stores a secret that already exists elsewhere (an imported vTPM's) and returns its reference. */
  storeSecret(label: string, owner: SecretOwner, secret: Buffer): Promise<string>;
  readSecret(ref: string): Promise<Buffer>;
  /** Idempotent: deleting an already-deleted secret succeeds. */
  deleteSecret(ref: string): Promise<void>;
  /**
   * Resolves once the backend answers (its files, token or service), without touching a secret; throws a
   * KeyManagerError otherwise. What `/readyz` asks.
   */
  checkReachable(): Promise<void>;
  /**
   * A new key-encryption key; every secret is re-wrapped under it, values and
   * references unchanged, then the old key is destroyed. An interrupted
   * rotation is finished when the key manager opens again.
   *
   * Absent where the key-encryption keys are the key manager's own
   * (Barbican's): there the control plane, which knows every reference,
   * stores each secret anew under the key manager's current keys and deletes
   * the old one (src/control/secret-rotation.ts).
   */
  rotate?(): Promise<RotationReport>;
  /**
   * Runs `work` with the files a restored data directory needs to open this backend's secrets, while no secret
   * is stored, read, deleted or rotated: what `work` copies meanwhile (the database) agrees with them. Absent
   * where the secrets are not in the data directory (Barbican's).
   */
  backup?<T>(work: (files: KeyFile[]) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}
