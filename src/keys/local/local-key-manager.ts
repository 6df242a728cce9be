/**
 * The embedded key manager: every secret is its own file, sealed under a
 * master key. Deleting a vTPM deletes its file, which crypto-erases its state
 * even in a backup of the database.
 *
 * The master key is the root of this backend. Sealed to the host's TPM
 * (--seal-to-tpm), it exists on disk only as two TPM blobs that no other TPM
 * can open, so a copied data directory unlocks nothing. Without a TPM it is a
 * 0600 file in the data directory, which a copy carries along.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { access, mkdir, open as openFile, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError, KeyManagerError } from '../../errors.js';
import { KEY_BYTES, open, seal } from '../aead.js';
import type { KeyManager } from '../key-manager.js';
import { sealToHostTpm, unsealFromHostTpm, type HostTpmOptions } from './host-tpm.js';

const REF_PREFIX = 'local:';
const REF_PATTERN = /^local:[0-9a-f-]{36}$/;

async function writeFileAtomically(path: string, content: Buffer): Promise<void> {
  const temporary = `${path}.tmp-${process.pid}`;
  const handle = await openFile(temporary, 'wx', 0o600);
  try {
    await handle.writeFile(content);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temporary, path);
}

async function readOrCreateMasterKey(path: string): Promise<Buffer> {
  try {
    const key = await readFile(path);
    if (key.length !== KEY_BYTES) throw new KeyManagerError(`master key ${path} is damaged: expected ${KEY_BYTES} bytes`, { path });
    return key;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const key = randomBytes(KEY_BYTES);
  await writeFileAtomically(path, key);
  return key;
}

const exists = (path: string) => access(path).then(() => true, () => false);

/**
 * The master key sealed to the host's TPM: unsealed if it is sealed already;
 * otherwise the existing plaintext key (or a new one) is sealed, checked by
 * unsealing it, and only then is the plaintext file removed.
 */
async function sealedMasterKey(keysDir: string, hostTpm: HostTpmOptions): Promise<Buffer> {
  const [pub, priv, plain] = [join(keysDir, 'master.tpm.pub'), join(keysDir, 'master.tpm.priv'), join(keysDir, 'master.key')];
  if (await exists(pub)) return unsealFromHostTpm({ public: await readFile(pub), private: await readFile(priv) }, hostTpm);
  const key = (await exists(plain)) ? await readOrCreateMasterKey(plain) : randomBytes(KEY_BYTES);
  const sealed = await sealToHostTpm(key, hostTpm);
  if (!(await unsealFromHostTpm(sealed, hostTpm)).equals(key)) throw new KeyManagerError(`the host TPM (${hostTpm.tcti}) did not give back the key it sealed`);
  await writeFileAtomically(priv, sealed.private);
  await writeFileAtomically(pub, sealed.public);
  if (await exists(plain)) {
    await writeFile(plain, randomBytes(KEY_BYTES));
    await unlink(plain);
  }
  return key;
}

export class LocalKeyManager implements KeyManager {
  readonly kind = 'local';

  private constructor(private readonly secretsDir: string, private readonly masterKey: Buffer) {}

  static async open(dataDir: string, hostTpm?: HostTpmOptions): Promise<LocalKeyManager> {
    const keysDir = join(dataDir, 'keys');
    const secretsDir = join(keysDir, 'secrets');
    await mkdir(secretsDir, { recursive: true, mode: 0o700 });
    if (hostTpm) return new LocalKeyManager(secretsDir, await sealedMasterKey(keysDir, hostTpm));
    if (await exists(join(keysDir, 'master.tpm.pub'))) {
      throw new KeyManagerError("this data directory's master key is sealed to a TPM: start with --seal-to-tpm (and --host-tpm when the TPM is not /dev/tpmrm0)");
    }
    return new LocalKeyManager(secretsDir, await readOrCreateMasterKey(join(keysDir, 'master.key')));
  }

  private pathOf(ref: string): string {
    if (!REF_PATTERN.test(ref)) throw new InvalidArgumentError('secret_ref', 'a local key manager reference (local:<uuid>)', ref);
    return join(this.secretsDir, ref.slice(REF_PREFIX.length));
  }

  createSecret(): Promise<string> {
    return this.storeSecret('', undefined, randomBytes(KEY_BYTES));
  }

  async storeSecret(_label: string, _owner: unknown, secret: Buffer): Promise<string> {
    const ref = `${REF_PREFIX}${randomUUID()}`;
    await writeFileAtomically(this.pathOf(ref), seal(this.masterKey, secret, ref));
    return ref;
  }

  async readSecret(ref: string): Promise<Buffer> {
    let sealed: Buffer;
    try {
      sealed = await readFile(this.pathOf(ref));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new KeyManagerError(`secret ${ref} does not exist in the local key manager`, { ref });
      throw error;
    }
    return open(this.masterKey, sealed, ref, `secret ${ref}`);
  }

  async deleteSecret(ref: string): Promise<void> {
    try {
      await unlink(this.pathOf(ref));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }

  async close(): Promise<void> {
    this.masterKey.fill(0);
  }
}
