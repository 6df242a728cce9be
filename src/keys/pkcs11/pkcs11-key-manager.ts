/**
 * A hardware security module as the key manager, through PKCS#11: the
 * key-encryption key (KEK) is an AES-256 key generated inside the token,
 * sensitive and not extractable, so it never exists outside the HSM. Each
 * vTPM's secret is encrypted by the token (AES-GCM, the reference as
 * associated data) and the result kept as a file in the data directory;
 * deleting the file crypto-erases the vTPM, and a copy of the data directory
 * opens nothing without the HSM and its PIN.
 *
 * Every KEK of this installation carries one label (--pkcs11-key-label);
 * keys/pkcs11/kek.json names the current one by CKA_ID, and the next one
 * while a rotation runs. A wrapped secret starts with the CKA_ID of the KEK it
 * is under, so a resumed rotation knows what is left to do.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { readdir, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { IntegrityError, InvalidArgumentError, KeyManagerError } from '../../errors.js';
import { KEY_BYTES } from '../aead.js';
import {
  filesOf,
  isTemporary,
  makeDirectoryDurably,
  readIfExists,
  removeLeftoverTemporaries,
  syncDirectory,
  writeFileAtomically,
} from '../files.js';
import type { KeyFile, KeyManager, RotationReport } from '../key-manager.js';
import { RotationGate } from '../rotation-gate.js';
import { withWiped } from '../wiped.js';
import type { Pkcs11TokenOptions, TokenKey } from './token.js';
import { TokenThread } from './token-thread.js';

/** Under the data directory. */
const KEYS_DIR = join('keys', 'pkcs11');
const REF_PREFIX = 'pkcs11:';
const REF_PATTERN = /^pkcs11:[0-9a-f-]{36}$/;
const FORMAT_VERSION = 1;
const KEY_ID_BYTES = 16;

export interface Pkcs11Options extends Pkcs11TokenOptions {
  /** CKA_LABEL of this installation's key-encryption keys in the token. */
  keyLabel: string;
  /** How long a call may wait for the token before it fails as "key manager unavailable". */
  callDeadlineMs?: number;
}

interface KekState {
  /** CKA_ID (hex) of the key every secret is under. */
  current: string;
  /** CKA_ID (hex) of the key a rotation is moving them to. */
  next?: string;
}

export class Pkcs11KeyManager implements KeyManager {
  readonly kind = 'pkcs11';
  readonly ownerScoped = false;
  /** A rotation waits for the stores, reads and deletes under way, and those that start meanwhile wait for it. */
  private readonly gate = new RotationGate();
  private rotation: Promise<RotationReport> | undefined;

  private constructor(
    private readonly dir: string,
    private readonly token: TokenThread,
    private readonly keyLabel: string,
    private current: TokenKey,
  ) {}

  static async open(dataDir: string, options: Pkcs11Options): Promise<Pkcs11KeyManager> {
    const dir = join(dataDir, KEYS_DIR);
    await makeDirectoryDurably(join(dir, 'secrets'), 0o700);
    for (const leftovers of [dir, join(dir, 'secrets')]) await removeLeftoverTemporaries(leftovers);
    const { keyLabel: _, callDeadlineMs, ...tokenOptions } = options;
    const token = await TokenThread.open(tokenOptions, callDeadlineMs);
    try {
      const keys = await token.findKeys(options.keyLabel);
      let state = await readState(dir);
      if (!state) {
        if (keys.length > 0) {
          throw new KeyManagerError(
            `the token already holds ${keys.length} key(s) labelled "${options.keyLabel}" ` +
              "that this data directory does not know (another installation's?): " +
              'give this one its own --pkcs11-key-label',
          );
        }
        const first = await token.generateKey(options.keyLabel);
        keys.push(first);
        state = { current: first.id.toString('hex') };
        await writeState(dir, state);
      }
      const find = (id: string, role: 'current' | 'next') => {
        const key = keys.find((k) => k.id.toString('hex') === id);
        if (!key)
          throw new KeyManagerError(
            `the ${role} key-encryption key (label "${options.keyLabel}", id ${id}) is not in the token: ` +
              'the secrets wrapped under it cannot be opened',
          );
        return key;
      };
      const manager = new Pkcs11KeyManager(dir, token, options.keyLabel, find(state.current, 'current'));
      // A rotation that was interrupted is finished before anything else.
      if (state.next) await manager.rewrapAll(find(state.next, 'next'));
      return manager;
    } catch (error) {
      await token.close();
      throw error;
    }
  }

  /**
   * A new KEK in the token; every secret is re-wrapped under it (its value unchanged), then the old KEK is destroyed.
   */
  rotate(): Promise<RotationReport> {
    this.rotation ??= this.gate
      .alone(async () => {
        const next = await this.token.generateKey(this.keyLabel);
        await writeState(this.dir, { current: this.current.id.toString('hex'), next: next.id.toString('hex') });
        return this.rewrapAll(next);
      })
      .finally(() => (this.rotation = undefined));
    return this.rotation;
  }

  /** Idempotent: a secret already under `next` (a resumed rotation) is left as it is. */
  private async rewrapAll(next: TokenKey): Promise<RotationReport> {
    let rewrapped = 0;
    let already = 0;
    for (const file of (await readdir(join(this.dir, 'secrets'))).filter((f) => !isTemporary(f))) {
      const ref = `${REF_PREFIX}${file}`;
      const wrapped = await readIfExists(this.pathOf(ref));
      if (wrapped === undefined) continue;
      if (keyIdOf(wrapped, ref).equals(next.id)) {
        already += 1;
        continue;
      }
      await withWiped(await this.unwrap(wrapped, ref), async (secret) =>
        writeFileAtomically(this.pathOf(ref), await this.wrap(next, secret, ref)),
      );
      rewrapped += 1;
    }
    await writeState(this.dir, { current: next.id.toString('hex') });
    // Old KEKs, and any a crash left behind before kek.json named it, go now that nothing is under them.
    for (const key of await this.token.findKeys(this.keyLabel))
      if (!key.id.equals(next.id)) await this.token.destroy(key);
    this.current = next;
    return { kind: this.kind, rewrapped, already_rewrapped: already };
  }

  private async wrap(key: TokenKey, secret: Buffer, ref: string): Promise<Buffer> {
    const sealed = await this.token.encrypt(key, secret, Buffer.from(ref));
    return Buffer.concat([Buffer.from([FORMAT_VERSION]), key.id, sealed]);
  }

  private async unwrap(wrapped: Buffer, ref: string): Promise<Buffer> {
    const keyId = keyIdOf(wrapped, ref);
    if (!keyId.equals(this.current.id)) {
      throw new IntegrityError(
        `secret ${ref} is wrapped under key-encryption key ${keyId.toString('hex')}, ` +
          "which is not this installation's current key",
        { ref },
      );
    }
    const secret = await this.token.decrypt(this.current, wrapped.subarray(1 + KEY_ID_BYTES), Buffer.from(ref));
    if (!secret)
      throw new IntegrityError(
        `secret ${ref} failed authentication in the token: it was altered, or belongs to something else`,
        { ref },
      );
    return secret;
  }

  private pathOf(ref: string): string {
    if (!REF_PATTERN.test(ref))
      throw new InvalidArgumentError('secret_ref', 'a PKCS#11 key manager reference (pkcs11:<uuid>)', ref);
    return join(this.dir, 'secrets', ref.slice(REF_PREFIX.length));
  }

  createSecret(): Promise<string> {
    return this.storeSecret('', undefined, randomBytes(KEY_BYTES));
  }

  storeSecret(_label: string, _owner: unknown, secret: Buffer): Promise<string> {
    return this.gate.shared(async () => {
      const ref = `${REF_PREFIX}${randomUUID()}`;
      await writeFileAtomically(this.pathOf(ref), await this.wrap(this.current, secret, ref));
      return ref;
    });
  }

  readSecret(ref: string): Promise<Buffer> {
    return this.gate.shared(async () => {
      const wrapped = await readIfExists(this.pathOf(ref));
      if (!wrapped) throw new KeyManagerError(`secret ${ref} does not exist in the PKCS#11 key manager`, { ref });
      return this.unwrap(wrapped, ref);
    });
  }

  /** The token answers and still holds the current key-encryption key. */
  async checkReachable(): Promise<void> {
    const keys = await this.token.findKeys(this.keyLabel);
    if (!keys.some((key) => key.id.equals(this.current.id)))
      throw new KeyManagerError(`the key-encryption key (label "${this.keyLabel}") is no longer in the token`);
  }

  deleteSecret(ref: string): Promise<void> {
    return this.gate.shared(() => this.removeWrapped(ref));
  }

  private async removeWrapped(ref: string): Promise<void> {
    await unlink(this.pathOf(ref)).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOENT') throw error;
    });
    // A removal a power loss could undo would bring the secret, and the state it unlocks, back.
    await syncDirectory(join(this.dir, 'secrets'));
  }

  /**
   * The wrapped secrets and kek.json, which names the key-encryption key they are under. That key never
   * leaves the token, so a backup opens nothing without this HSM (or one it was replicated to); a rotation
   * destroys the old key, so the backups taken before it open nothing at all.
   */
  backup<T>(work: (files: KeyFile[]) => Promise<T>): Promise<T> {
    return this.gate.alone(async () =>
      work([
        { path: join(KEYS_DIR, 'kek.json'), data: await readFile(join(this.dir, 'kek.json')) },
        ...(await filesOf(join(this.dir, 'secrets'), join(KEYS_DIR, 'secrets'))),
      ]),
    );
  }

  /** Once what is under way has finished. */
  close(): Promise<void> {
    return this.gate.alone(() => this.token.close());
  }
}

function keyIdOf(wrapped: Buffer, ref: string): Buffer {
  if (wrapped.length <= 1 + KEY_ID_BYTES || wrapped[0] !== FORMAT_VERSION)
    throw new IntegrityError(`secret ${ref} is truncated or not in a known format`, { ref });
  return wrapped.subarray(1, 1 + KEY_ID_BYTES);
}

async function readState(dir: string): Promise<KekState | undefined> {
  const content = await readIfExists(join(dir, 'kek.json'));
  if (!content) return undefined;
  const state = JSON.parse(content.toString()) as Partial<KekState>;
  if (typeof state.current !== 'string')
    throw new IntegrityError(`${join(dir, 'kek.json')} does not name the current key-encryption key`);
  return state as KekState;
}

function writeState(dir: string, state: KekState): Promise<void> {
  return writeFileAtomically(join(dir, 'kek.json'), Buffer.from(JSON.stringify(state)));
}
