/**
 * One PKCS#11 token, through its vendor's module (SoftHSM2, a network HSM's
 * client library, a smart card's driver): a logged-in session, and the few
 * operations the key manager needs on AES keys that never leave the token.
 *
 * Calls are synchronous on one session: PKCS#11 operations are two calls
 * (Init, then the operation) that must not interleave on a session, and the
 * event loop guarantees they do not. A token that goes away (unplugged, HSM
 * restarted, session dropped) fails the call with "key manager unavailable";
 * the next call initialises the module again and logs in anew, so it works
 * again, without a restart of the service, once the token is back.
 */
import { randomBytes } from 'node:crypto';
import pkcs11js, { type GcmParams, type Handle, type Mechanism } from 'pkcs11js';
import { KeyManagerError } from '../../errors.js';

export interface Pkcs11TokenOptions {
  /** The vendor's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so */
  module: string;
  /** CKA_LABEL of the token (as `softhsm2-util --init-token --label` sets it). */
  tokenLabel: string;
  /** The token's user PIN. */
  pin: string;
}

/** A key in the token, by label and CKA_ID: handles do not survive a token that went away and came back. */
export interface TokenKey {
  label: string;
  /** CKA_ID: tells the key-encryption keys of one label apart. */
  id: Buffer;
}

const GCM_IV_BYTES = 12;
const GCM_TAG_BITS = 128;

/** Errors after which the session (or the token under it) is gone: the next call starts over. */
const SESSION_LOST = new Set([
  'CKR_SESSION_HANDLE_INVALID',
  'CKR_SESSION_CLOSED',
  'CKR_DEVICE_REMOVED',
  'CKR_DEVICE_ERROR',
  'CKR_TOKEN_NOT_PRESENT',
  'CKR_TOKEN_NOT_RECOGNIZED',
  'CKR_USER_NOT_LOGGED_IN',
  'CKR_CRYPTOKI_NOT_INITIALIZED',
]);

/** Errors after which a cached object handle is stale: the key is looked up again, once. */
const HANDLE_STALE = new Set(['CKR_OBJECT_HANDLE_INVALID', 'CKR_KEY_HANDLE_INVALID']);

const nameOf = (error: unknown): string =>
  error instanceof pkcs11js.Pkcs11Error ? error.message : (error as Error).message;

export class Pkcs11Token {
  private readonly library = new pkcs11js.PKCS11();
  private session: Handle | undefined;
  /** Object handles by CKA_ID (hex), valid for the session they were found in. */
  private readonly handles = new Map<string, Handle>();
  /** Set when the token failed: the next call initialises the module again. */
  private restart = false;

  private constructor(private readonly options: Pkcs11TokenOptions) {}

  /** Loads the module and logs in, so that a wrong module, token or PIN stops the service at start. */
  static open(options: Pkcs11TokenOptions): Pkcs11Token {
    const token = new Pkcs11Token(options);
    try {
      token.library.load(options.module);
    } catch (error) {
      throw new KeyManagerError(`cannot load the PKCS#11 module ${options.module}: ${nameOf(error)}`, {
        module: options.module,
      });
    }
    try {
      token.library.C_Initialize();
    } catch (error) {
      throw new KeyManagerError(`the PKCS#11 module ${options.module} failed to initialise: ${nameOf(error)}`, {
        module: options.module,
      });
    }
    try {
      token.use(() => undefined);
    } catch (error) {
      token.close();
      throw error;
    }
    return token;
  }

  private describe(): string {
    return `PKCS#11 token "${this.options.tokenLabel}" (${this.options.module})`;
  }

  private slot(): Handle {
    const labels: string[] = [];
    for (const slot of this.library.C_GetSlotList(true)) {
      const label = this.library.C_GetTokenInfo(slot).label.trim();
      if (label === this.options.tokenLabel) return slot;
      if (label) labels.push(label);
    }
    throw new KeyManagerError(
      `key manager unavailable: no ${this.describe()}; ` +
        `tokens present: ${labels.length ? labels.map((l) => `"${l}"`).join(', ') : 'none'}`,
      {
        token: this.options.tokenLabel,
      },
    );
  }

  private login(): Handle {
    const session = this.library.C_OpenSession(this.slot(), pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      this.library.C_Login(session, pkcs11js.CKU_USER, this.options.pin);
    } catch (error) {
      if (nameOf(error) !== 'CKR_USER_ALREADY_LOGGED_IN') {
        this.library.C_CloseSession(session);
        if (nameOf(error) === 'CKR_PIN_INCORRECT' || nameOf(error) === 'CKR_PIN_LOCKED') {
          throw new KeyManagerError(`the ${this.describe()} refused the PIN (${nameOf(error)})`, {
            token: this.options.tokenLabel,
          });
        }
        throw error;
      }
    }
    return session;
  }

  /** Runs `operation` on the logged-in session, opening one first when there is none. */
  private use<T>(operation: (session: Handle) => T): T {
    let session: Handle;
    try {
      session = this.session ??= this.connect();
    } catch (error) {
      this.dropSession();
      if (error instanceof KeyManagerError) throw error;
      throw this.unavailable(nameOf(error));
    }
    try {
      return operation(session);
    } catch (error) {
      if (error instanceof KeyManagerError) throw error;
      const name = nameOf(error);
      if (SESSION_LOST.has(name)) {
        this.dropSession();
        throw this.unavailable(name);
      }
      throw new KeyManagerError(`the ${this.describe()} failed: ${name}`, { token: this.options.tokenLabel });
    }
  }

  /**
   * After a failure the module starts over (C_Finalize, C_Initialize): some (SoftHSM2) see a token come back only then.
   */
  private connect(): Handle {
    if (this.restart) {
      try {
        this.library.C_Finalize();
      } catch {
        // Finalising a module that lost its token can fail; initialising again is what matters.
      }
      this.library.C_Initialize();
      this.restart = false;
    }
    return this.login();
  }

  private unavailable(cause: string): KeyManagerError {
    return new KeyManagerError(
      `key manager unavailable: the ${this.describe()} failed (${cause}); vTPMs already running keep running`,
      { token: this.options.tokenLabel },
    );
  }

  /** A new AES-256 key inside the token: persistent, sensitive, never extractable, for encryption only. */
  generateKey(label: string): TokenKey {
    const id = randomBytes(16);
    const handle = this.use((session) =>
      this.library.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: true },
        { type: pkcs11js.CKA_EXTRACTABLE, value: false },
        { type: pkcs11js.CKA_ENCRYPT, value: true },
        { type: pkcs11js.CKA_DECRYPT, value: true },
        { type: pkcs11js.CKA_WRAP, value: false },
        { type: pkcs11js.CKA_UNWRAP, value: false },
        { type: pkcs11js.CKA_LABEL, value: label },
        { type: pkcs11js.CKA_ID, value: id },
      ]),
    );
    this.handles.set(id.toString('hex'), handle);
    return { label, id };
  }

  /** Every secret key object with this label. */
  findKeys(label: string): TokenKey[] {
    return this.use((session) =>
      this.find(session, [{ type: pkcs11js.CKA_LABEL, value: label }]).map((handle) => {
        const [attribute] = this.library.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_ID }]);
        const id = Buffer.from(attribute?.value as Buffer);
        this.handles.set(id.toString('hex'), handle);
        return { label, id };
      }),
    );
  }

  private find(session: Handle, template: Array<{ type: number; value: string | Buffer }>): Handle[] {
    this.library.C_FindObjectsInit(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      ...template,
    ]);
    const handles: Handle[] = [];
    try {
      for (
        let batch = this.library.C_FindObjects(session, 64);
        batch.length > 0;
        batch = this.library.C_FindObjects(session, 64)
      )
        handles.push(...batch);
    } finally {
      this.library.C_FindObjectsFinal(session);
    }
    return handles;
  }

  /** Runs `operation` with the key's handle, looking the key up again once when the handle went stale. */
  private withKey<T>(key: TokenKey, operation: (session: Handle, handle: Handle) => T): T {
    const hex = key.id.toString('hex');
    const lookUp = (session: Handle): Handle => {
      const cached = this.handles.get(hex);
      if (cached) return cached;
      const [handle] = this.find(session, [
        { type: pkcs11js.CKA_LABEL, value: key.label },
        { type: pkcs11js.CKA_ID, value: key.id },
      ]);
      if (!handle) {
        // The token may have gone, and may come back: the next call starts over.
        this.dropSession();
        throw new KeyManagerError(
          `key manager unavailable: the key-encryption key (label "${key.label}", id ${hex}) ` +
            `is not in the ${this.describe()}; vTPMs already running keep running`,
          {
            token: this.options.tokenLabel,
          },
        );
      }
      this.handles.set(hex, handle);
      return handle;
    };
    return this.use((session) => {
      try {
        return operation(session, lookUp(session));
      } catch (error) {
        if (!HANDLE_STALE.has(nameOf(error))) throw error;
        this.handles.delete(hex);
        return operation(session, lookUp(session));
      }
    });
  }

  /** AES-GCM inside the token; the result is iv | ciphertext | tag. */
  encrypt(key: TokenKey, plaintext: Buffer, associatedData: Buffer): Buffer {
    const iv = randomBytes(GCM_IV_BYTES);
    const ciphertext = this.withKey(key, (session, handle) => {
      this.library.C_EncryptInit(session, gcm(iv, associatedData), handle);
      return this.library.C_Encrypt(session, plaintext, Buffer.alloc(plaintext.length + GCM_TAG_BITS / 8));
    });
    return Buffer.concat([iv, ciphertext]);
  }

  /** Undefined when the ciphertext does not authenticate under this key and associated data. */
  decrypt(key: TokenKey, sealed: Buffer, associatedData: Buffer): Buffer | undefined {
    if (sealed.length < GCM_IV_BYTES + GCM_TAG_BITS / 8) return undefined;
    const iv = sealed.subarray(0, GCM_IV_BYTES);
    return this.withKey(key, (session, handle) => {
      this.library.C_DecryptInit(session, gcm(iv, associatedData), handle);
      try {
        return this.library.C_Decrypt(session, sealed.subarray(GCM_IV_BYTES), Buffer.alloc(sealed.length));
      } catch (error) {
        // Tokens report a failed tag as CKR_ENCRYPTED_DATA_INVALID, or (SoftHSM2) CKR_GENERAL_ERROR.
        if (['CKR_ENCRYPTED_DATA_INVALID', 'CKR_ENCRYPTED_DATA_LEN_RANGE', 'CKR_GENERAL_ERROR'].includes(nameOf(error)))
          return undefined;
        throw error;
      }
    });
  }

  destroy(key: TokenKey): void {
    this.withKey(key, (session, handle) => this.library.C_DestroyObject(session, handle));
    this.handles.delete(key.id.toString('hex'));
  }

  private dropSession(): void {
    const session = this.session;
    this.session = undefined;
    this.handles.clear();
    this.restart = true;
    try {
      if (session !== undefined) this.library.C_CloseSession(session);
    } catch {
      // A session the token already lost cannot be closed; dropping it is all that is left to do.
    }
  }

  close(): void {
    try {
      this.dropSession();
      this.library.C_Finalize();
    } finally {
      this.library.close();
    }
  }
}

function gcm(iv: Buffer, aad: Buffer): Mechanism {
  const parameter: GcmParams = {
    type: pkcs11js.CK_PARAMS_GCM,
    iv,
    ivBits: GCM_IV_BYTES * 8,
    aad,
    tagBits: GCM_TAG_BITS,
  };
  return { mechanism: pkcs11js.CKM_AES_GCM, parameter };
}
