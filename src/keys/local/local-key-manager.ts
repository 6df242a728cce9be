/**
 * The embedded key manager: every secret is its own file, sealed under a
 * master key. Deleting a vTPM deletes its file, which crypto-erases its state
 * even in a backup of the database.
 *
 * The master key is the root of this backend. Sealed to the host's TPM
 * (--seal-to-tpm), it exists on disk only as the TPM's sealed blobs, which no
 * other TPM can load, so a copied data directory unlocks nothing. Without a TPM it is a
 * 0600 file in the data directory, which a copy carries along.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { access, constants, readdir, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError, KeyManagerError } from '../../errors.js';
import { KEY_BYTES, open, seal } from '../aead.js';
import type { KeyFile, KeyManager, RotationReport } from '../key-manager.js';
import type { HostTpmOptions } from './host-tpm.js';
import {
  fileExists,
  filesOf,
  isTemporary,
  makeDirectoryDurably,
  removeLeftoverTemporaries,
  syncDirectory,
  writeFileAtomically,
} from '../files.js';
import { RotationGate } from '../rotation-gate.js';
import { wipe, withWiped } from '../wiped.js';
import { FileMasterKeys, TpmMasterKeys, type MasterKeyStore } from './master-keys.js';

/** Under the data directory. */
const KEYS_DIR = 'keys';
/** Where FileMasterKeys keeps the master key when it is not sealed to a TPM. */
const PLAINTEXT_MASTER_KEY = join(KEYS_DIR, 'master.key');
const REF_PREFIX = 'local:';
const REF_PATTERN = /^local:[0-9a-f-]{36}$/;

export class LocalKeyManager implements KeyManager {
  readonly kind = 'local';
  readonly ownerScoped = false;
  /** A rotation waits for the stores, reads and deletes under way, and those that start meanwhile wait for it. */
  private readonly gate = new RotationGate();
  private rotation: Promise<RotationReport> | undefined;

  private constructor(
    private readonly secretsDir: string,
    private readonly keys: MasterKeyStore,
    private masterKey: Buffer,
  ) {}

  /** The master key's file when it is not sealed to a TPM: whoever reads it reads every vTPM. */
  static plaintextKeyFile(dataDir: string): string {
    return join(dataDir, PLAINTEXT_MASTER_KEY);
  }

  static async open(dataDir: string, hostTpm?: HostTpmOptions): Promise<LocalKeyManager> {
    const keysDir = join(dataDir, KEYS_DIR);
    const secretsDir = join(keysDir, 'secrets');
    await makeDirectoryDurably(secretsDir, 0o700);
    for (const dir of [keysDir, secretsDir]) await removeLeftoverTemporaries(dir);
    if (!hostTpm && (await fileExists(join(keysDir, 'master.tpm')))) {
      throw new KeyManagerError(
        "this data directory's master key is sealed to a TPM: " +
          'start with --seal-to-tpm (and --host-tpm when the TPM is not /dev/tpmrm0)',
      );
    }
    const keys: MasterKeyStore = hostTpm ? new TpmMasterKeys(keysDir, hostTpm) : new FileMasterKeys(keysDir);
    let master = await keys.load('master');
    if (!master) {
      master = randomBytes(KEY_BYTES);
      await keys.save('master', master);
    }
    const manager = new LocalKeyManager(secretsDir, keys, master);
    // A rotation that was interrupted is finished before anything else.
    const next = await keys.load('master.next');
    if (next) await manager.rewrapAll(next);
    else await keys.destroyRetired();
    return manager;
  }

  /** A new master key; every secret is re-sealed under it (its value unchanged), then the old key is destroyed. */
  rotate(): Promise<RotationReport> {
    this.rotation ??= this.gate
      .alone(async () => {
        const next = randomBytes(KEY_BYTES);
        await this.keys.save('master.next', next);
        return this.rewrapAll(next);
      })
      .finally(() => (this.rotation = undefined));
    return this.rotation;
  }

  /** Idempotent: a secret already sealed under `next` (a resumed rotation) is left as it is. */
  private async rewrapAll(next: Buffer): Promise<RotationReport> {
    let rewrapped = 0;
    let already = 0;
    for (const file of (await readdir(this.secretsDir)).filter((f) => !isTemporary(f))) {
      const ref = `${REF_PREFIX}${file}`;
      const path = this.pathOf(ref);
      const sealed = await readFile(path).catch((error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT') return undefined;
        throw error;
      });
      if (sealed === undefined) continue;
      if (opens(next, sealed, ref)) {
        already += 1;
        continue;
      }
      await withWiped(open(this.masterKey, sealed, ref, `secret ${ref}`), (secret) =>
        writeFileAtomically(path, seal(next, secret, ref)),
      );
      rewrapped += 1;
    }
    await this.keys.promote();
    wipe(this.masterKey);
    this.masterKey = next;
    return { kind: this.kind, rewrapped, already_rewrapped: already };
  }

  private pathOf(ref: string): string {
    if (!REF_PATTERN.test(ref))
      throw new InvalidArgumentError('secret_ref', 'a local key manager reference (local:<uuid>)', ref);
    return join(this.secretsDir, ref.slice(REF_PREFIX.length));
  }

  createSecret(): Promise<string> {
    return this.storeSecret('', undefined, randomBytes(KEY_BYTES));
  }

  storeSecret(_label: string, _owner: unknown, secret: Buffer): Promise<string> {
    return this.gate.shared(async () => {
      const ref = `${REF_PREFIX}${randomUUID()}`;
      await writeFileAtomically(this.pathOf(ref), seal(this.masterKey, secret, ref));
      return ref;
    });
  }

  readSecret(ref: string): Promise<Buffer> {
    return this.gate.shared(() => this.readSealed(ref));
  }

  /** The master key is in memory; what can fail is the directory the sealed secrets are in. */
  async checkReachable(): Promise<void> {
    try {
      await access(this.secretsDir, constants.R_OK | constants.W_OK | constants.X_OK);
    } catch (error) {
      throw new KeyManagerError(
        `the local key manager's secrets directory ${this.secretsDir} cannot be used: ${(error as Error).message}`,
        { dir: this.secretsDir },
      );
    }
  }

  private async readSealed(ref: string): Promise<Buffer> {
    let sealed: Buffer;
    try {
      sealed = await readFile(this.pathOf(ref));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT')
        throw new KeyManagerError(`secret ${ref} does not exist in the local key manager`, { ref });
      throw error;
    }
    return open(this.masterKey, sealed, ref, `secret ${ref}`);
  }

  deleteSecret(ref: string): Promise<void> {
    return this.gate.shared(() => this.removeSealed(ref));
  }

  private async removeSealed(ref: string): Promise<void> {
    try {
      await unlink(this.pathOf(ref));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    // A removal a power loss could undo would bring the secret, and the state it unlocks, back.
    await syncDirectory(this.secretsDir);
  }

  /**
   * The master key itself goes into the backup as the plaintext key file even when it is sealed to
   * this host's TPM, which no other host has: the backup is the way back after this host is lost. A restored
   * directory started with --seal-to-tpm seals it to its own host's TPM and removes the file.
   */
  backup<T>(work: (files: KeyFile[]) => Promise<T>): Promise<T> {
    return this.gate.alone(async () => {
      const secrets = await filesOf(this.secretsDir, join(KEYS_DIR, 'secrets'));
      return withWiped(Buffer.from(this.masterKey), (master) =>
        work([{ path: PLAINTEXT_MASTER_KEY, data: master }, ...secrets]),
      );
    });
  }

  /** Once what is under way has finished. */
  close(): Promise<void> {
    return this.gate.alone(async () => wipe(this.masterKey));
  }
}

function opens(key: Buffer, sealed: Buffer, ref: string): boolean {
  try {
    wipe(open(key, sealed, ref, `secret ${ref}`));
    return true;
  } catch {
    return false;
  }
}
