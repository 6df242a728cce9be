/**
 * Where the local key manager keeps its master key, and the next one while a
 * rotation runs: plaintext 0600 files, or sealed to the host's TPM. Each key
 * is one file, written beside its place and renamed over it (files.ts); no key
 * file is ever overwritten while anything may still need it.
 */
import { link, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { KeyManagerError } from '../../errors.js';
import { KEY_BYTES } from '../aead.js';
import { destroyFile, readIfExists, syncDirectory, writeFileAtomically } from '../files.js';
import { sealToHostTpm, unsealFromHostTpm, type HostTpmOptions } from './host-tpm.js';

export type MasterKeyName = 'master' | 'master.next';

export interface MasterKeyStore {
  load(name: MasterKeyName): Promise<Buffer | undefined>;
  /** Durable once it resolves. */
  save(name: MasterKeyName, key: Buffer): Promise<void>;
  /** The next key becomes the master key, durably; the old one is overwritten, then gone. */
  promote(): Promise<void>;
  /** Destroys an old master key that an interrupted promote left behind. */
  destroyRetired(): Promise<void>;
}

const inodeOf = (path: string) =>
  stat(path).then(
    (s) => `${s.dev}:${s.ino}`,
    () => undefined,
  );

/**
 * The files of one kind of master key: `master<ext>`, `master.next<ext>`, and
 * `master.retired<ext>`, the old key between its replacement and its destruction.
 */
class KeyFiles {
  constructor(
    private readonly dir: string,
    private readonly ext: string,
  ) {}

  path(name: MasterKeyName | 'master.retired'): string {
    return join(this.dir, `${name}${this.ext}`);
  }

  /**
   * The old key keeps a second name (a hard link) while master.next is renamed
   * over master, so that once the rename is durable and nothing is sealed under
   * the old key any more, its bytes can be overwritten: without the link the
   * rename would free them as they are.
   */
  async promote(): Promise<void> {
    const [master, next, retired] = [this.path('master'), this.path('master.next'), this.path('master.retired')];
    await this.destroyRetired();
    await link(master, retired);
    await rename(next, master);
    await syncDirectory(this.dir);
    await destroyFile(retired);
  }

  async destroyRetired(): Promise<void> {
    const retired = await inodeOf(this.path('master.retired'));
    if (retired === undefined) return;
    if (retired === (await inodeOf(this.path('master')))) {
      // A crash between the link and the rename: master.retired is still the master key's second name.
      await unlink(this.path('master.retired'));
      await syncDirectory(this.dir);
    } else {
      // A crash after the rename: master.retired is the old key alone, which no secret is sealed under.
      await destroyFile(this.path('master.retired'));
    }
  }
}

/** `<name>.key`, 0600: whoever reads the data directory reads the key. */
export class FileMasterKeys implements MasterKeyStore {
  private readonly files: KeyFiles;

  constructor(dir: string) {
    this.files = new KeyFiles(dir, '.key');
  }

  async load(name: MasterKeyName): Promise<Buffer | undefined> {
    const path = this.files.path(name);
    const key = await readIfExists(path);
    if (key && key.length !== KEY_BYTES)
      throw new KeyManagerError(`master key ${path} is damaged: expected ${KEY_BYTES} bytes`);
    return key;
  }

  save(name: MasterKeyName, key: Buffer): Promise<void> {
    return writeFileAtomically(this.files.path(name), key);
  }

  promote(): Promise<void> {
    return this.files.promote();
  }

  destroyRetired(): Promise<void> {
    return this.files.destroyRetired();
  }
}

/** `<name>.tpm`: the TPM's public and private blobs of the sealed key, which only that TPM can load. */
export class TpmMasterKeys implements MasterKeyStore {
  private readonly files: KeyFiles;

  constructor(
    private readonly dir: string,
    private readonly hostTpm: HostTpmOptions,
  ) {
    this.files = new KeyFiles(dir, '.tpm');
  }

  /** A plaintext master key left from before sealing is sealed, checked, then overwritten and removed. */
  async load(name: MasterKeyName): Promise<Buffer | undefined> {
    const sealed = await readIfExists(this.files.path(name));
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
      // The sealed copy is durable and is the one loaded from now on: the plaintext file is no longer referenced.
      await destroyFile(join(this.dir, `${name}.key`));
    }
    return unsealed;
  }

  async save(name: MasterKeyName, key: Buffer): Promise<void> {
    const sealed = await sealToHostTpm(key, this.hostTpm);
    if (!(await unsealFromHostTpm(sealed, this.hostTpm)).equals(key))
      throw new KeyManagerError(`the host TPM (${this.hostTpm.tcti}) did not give back the key it sealed`);
    await writeFileAtomically(
      this.files.path(name),
      Buffer.from(
        JSON.stringify({ public: sealed.public.toString('base64'), private: sealed.private.toString('base64') }),
      ),
    );
  }

  promote(): Promise<void> {
    return this.files.promote();
  }

  destroyRetired(): Promise<void> {
    return this.files.destroyRetired();
  }
}
