/**
 * The PKCS#11 token on a worker thread of its own. A module's call takes as
 * long as its HSM answers (a network HSM that stopped answering: forever),
 * and on the event loop that would stall every request of the service,
 * whichever vTPM it is for. Here a call that gets no answer within the
 * deadline fails as "key manager unavailable" at once; calls queued behind a
 * hung one expire in the worker rather than run late; the worker keeps its
 * session, so the token works again when the HSM answers again.
 *
 * Secrets cross threads by transfer (moved, not copied), and the side that
 * hands one over wipes what it keeps.
 */
import { Worker } from 'node:worker_threads';
import { KeyManagerError } from '../../errors.js';
import type { Pkcs11TokenOptions, TokenKey } from './token.js';
import type { TokenFailure, TokenReply, TokenRequest } from './token-messages.js';

const DEFAULT_DEADLINE_MS = 10_000;

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

export class TokenThread {
  private worker: Promise<Worker> | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;

  private constructor(
    private readonly options: Pkcs11TokenOptions,
    private readonly deadlineMs: number,
  ) {}

  /** Loads the module and logs in on the thread, so that a wrong module, token or PIN stops the service at start. */
  static async open(options: Pkcs11TokenOptions, deadlineMs = DEFAULT_DEADLINE_MS): Promise<TokenThread> {
    const thread = new TokenThread(options, deadlineMs);
    await thread.started();
    return thread;
  }

  private describe(): string {
    return `PKCS#11 token "${this.options.tokenLabel}" (${this.options.module})`;
  }

  private unavailable(cause: string): KeyManagerError {
    return new KeyManagerError(
      `key manager unavailable: the ${this.describe()} ${cause}; vTPMs already running keep running`,
      { token: this.options.tokenLabel },
    );
  }

  private started(): Promise<Worker> {
    this.worker ??= new Promise<Worker>((resolve, reject) => {
      const worker = new Worker(new URL('./token-worker.js', import.meta.url), { workerData: this.options });
      const opening = setTimeout(() => {
        void worker.terminate();
        reject(this.unavailable(`did not open within ${this.deadlineMs} ms`));
      }, this.deadlineMs);
      worker.once('message', (reply: TokenReply) => {
        clearTimeout(opening);
        if ('failure' in reply) {
          void worker.terminate();
          reject(failed(reply.failure));
          return;
        }
        worker.on('message', (answer: TokenReply) => this.settle(answer));
        resolve(worker);
      });
      worker.once('error', (error) => {
        clearTimeout(opening);
        reject(this.unavailable(`failed on its thread (${error.message})`));
        this.lost(error);
      });
      worker.once('exit', () => this.lost(new Error('the thread exited')));
    });
    // An opening that failed is tried again by the next call (the token may be back by then).
    this.worker.catch(() => (this.worker = undefined));
    return this.worker;
  }

  /** The thread is gone: what waited for it fails, and the next call starts a new one. */
  private lost(error: Error): void {
    this.worker = undefined;
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      pending.reject(this.unavailable(`failed on its thread (${error.message})`));
      this.pending.delete(id);
    }
  }

  private settle(reply: TokenReply): void {
    const pending = this.pending.get(reply.id);
    if (!pending) {
      // The answer of a call that already failed by its deadline: a secret in it is not kept.
      if ('value' in reply && reply.value instanceof Uint8Array) reply.value.fill(0);
      return;
    }
    this.pending.delete(reply.id);
    clearTimeout(pending.timer);
    if ('failure' in reply) pending.reject(failed(reply.failure));
    else pending.resolve(reply.value);
  }

  private async call(call: TokenRequest, transfer: ArrayBuffer[] = []): Promise<unknown> {
    const worker = await this.started();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(this.unavailable(`did not answer within ${this.deadlineMs} ms`));
      }, this.deadlineMs);
      this.pending.set(id, { resolve, reject, timer });
      worker.postMessage({ ...call, id, expiresAt: Date.now() + this.deadlineMs }, transfer);
    });
  }

  async findKeys(label: string): Promise<TokenKey[]> {
    const keys = (await this.call({ method: 'findKeys', label })) as TokenKey[];
    return keys.map(keyFrom);
  }

  async generateKey(label: string): Promise<TokenKey> {
    return keyFrom((await this.call({ method: 'generateKey', label })) as TokenKey);
  }

  /** AES-GCM inside the token; the caller keeps (and wipes) its `plaintext`, the thread gets a copy it wipes. */
  async encrypt(key: TokenKey, plaintext: Buffer, associatedData: Buffer): Promise<Buffer> {
    const copy = new Uint8Array(plaintext);
    return asBuffer(
      (await this.call({ method: 'encrypt', key, plaintext: copy, associatedData }, [copy.buffer])) as Uint8Array,
    );
  }

  /** Undefined when the ciphertext does not authenticate under this key and associated data. */
  async decrypt(key: TokenKey, sealed: Buffer, associatedData: Buffer): Promise<Buffer | undefined> {
    const plaintext = (await this.call({ method: 'decrypt', key, sealed, associatedData })) as Uint8Array | undefined;
    return plaintext === undefined ? undefined : asBuffer(plaintext);
  }

  async destroy(key: TokenKey): Promise<void> {
    await this.call({ method: 'destroy', key });
  }

  /** Logs out and finalises the module on its thread, then ends the thread. */
  async close(): Promise<void> {
    const worker = await this.worker?.catch(() => undefined);
    if (!worker) return;
    try {
      await this.call({ method: 'close' });
    } finally {
      this.worker = undefined;
      await worker.terminate();
    }
  }
}

function failed(failure: TokenFailure): KeyManagerError {
  return new KeyManagerError(failure.message, failure.details);
}

const asBuffer = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
const keyFrom = (key: TokenKey): TokenKey => ({ label: key.label, id: asBuffer(key.id) });
