/**
 * Where the local key manager keeps its master key, and the next one while a
 * rotation runs: plaintext 0600 files, or sealed to the host's TPM. Each key
 * is one file, replaced by one rename.
 */
import { randomBytes } from 'node:crypto';
import { rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KeyManagerError } from '../../errors.js';
import { KEY_BYTES } from '../aead.js';
import { fileExists, readIfExists, writeFileAtomically } from '../files.js';
import { sealToHostTpm, unsealFromHostTpm, type HostTpmOptions } from './host-tpm.js';

export type MasterKeyName = 'master' | 'master.next';

export interface MasterKeyStore {
  load(name: MasterKeyName): Promise<Buffer | undefined>;
  /** Durable once it resolves. */
  save(name: MasterKeyName, key: Buffer): Promise<void>;
  /** The next key becomes the master key; the old one is overwritten, then gone. */
  promote(): Promise<void>;
}

async function overwriteAndRemove(path: string): Promise<void> {
  if (!(await fileExists(path))) return;
  await writeFile(path, randomBytes(KEY_BYTES));
  await unlink(path);
}

/** `<name>.key`, 0600: whoever reads the data directory reads the key. */
export class FileMasterKeys implements MasterKeyStore {
  constructor(private readonly dir: string) {}

  private path(name: MasterKeyName): string {
    return join(this.dir, `${name}.key`);
  }

  async load(name: MasterKeyName): Promise<Buffer | undefined> {
    const key = await readIfExists(this.path(name));
    if (key && key.length !== KEY_BYTES)
      throw new KeyManagerError(`master key ${this.path(name)} is damaged: expected ${KEY_BYTES} bytes`);
    return key;
  }

  save(name: MasterKeyName, key: Buffer): Promise<void> {
    return writeFileAtomically(this.path(name), key);
  }

  async promote(): Promise<void> {
    await writeFile(this.path('master'), randomBytes(KEY_BYTES));
    await rename(this.path('master.next'), this.path('master'));
  }
}

/** `<name>.tpm`: the TPM's public and private blobs of the sealed key, which only that TPM can load. */
export class TpmMasterKeys implements MasterKeyStore {
  constructor(
    private readonly dir: string,
    private readonly hostTpm: HostTpmOptions,
  ) {}

  private path(name: MasterKeyName): string {
    return join(this.dir, `${name}.tpm`);
  }

  /** A plaintext master key left from before sealing is sealed, checked, then overwritten and removed. */
  async load(name: MasterKeyName): Promise<Buffer | undefined> {
    const sealed = await readIfExists(this.path(name));
    if (sealed) {
      const { public: pub, private: priv } = JSON.parse(sealed.toString()) as { public: string; private: string };
      return unsealFromHostTpm(
        { public: Buffer.from(pub, 'base64'), private: Buffer.from(priv, 'base64') },
        this.hostTpm,
      );
    }
    const plaintext = new FileMasterKeys(this.dir);
    const unsealed = await plaintext.load(name);
    if (unsealed) {
      await this.save(name, unsealed);
      await overwriteAndRemove(join(this.dir, `${name}.key`));
    }
    return unsealed;
  }

  async save(name: MasterKeyName, key: Buffer): Promise<void> {
    const sealed = await sealToHostTpm(key, this.hostTpm);
    if (!(await unsealFromHostTpm(sealed, this.hostTpm)).equals(key))
      throw new KeyManagerError(`the host TPM (${this.hostTpm.tcti}) did not give back the key it sealed`);
    await writeFileAtomically(
      this.path(name),
      Buffer.from(
        JSON.stringify({ public: sealed.public.toString('base64'), private: sealed.private.toString('base64') }),
      ),
    );
  }

  async promote(): Promise<void> {
    await rename(this.path('master.next'), this.path('master'));
  }
}
