/**
 * The worker thread that holds the PKCS#11 token (see token-thread.ts): it
 * opens the token with the options it was given, answers `ready` (or the
 * reason it could not open), then runs each call it is sent, in order.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { VtpmError } from '../../errors.js';
import { wipe } from '../wiped.js';
import { Pkcs11Token, type Pkcs11TokenOptions, type TokenKey } from './token.js';
import type { TokenCall, TokenFailure, TokenReply } from './token-messages.js';

const port = parentPort!;

function failureOf(error: unknown): TokenFailure {
  if (error instanceof VtpmError) return { message: error.message, details: error.details };
  return { message: `the PKCS#11 token failed: ${(error as Error).message}` };
}

/** Structured cloning turns Buffers into Uint8Arrays; the token works on Buffers. */
const buffer = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
const keyOf = (key: TokenKey): TokenKey => ({ label: key.label, id: buffer(key.id) });

/** A result to send back with its bytes moved, not copied: the thread keeps no copy of a secret. */
function moved(bytes: Buffer): { value: Uint8Array; transfer: ArrayBuffer[] } {
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  wipe(bytes);
  return { value: copy, transfer: [copy.buffer] };
}

function run(token: Pkcs11Token, call: TokenCall): { value: unknown; transfer: ArrayBuffer[] } {
  switch (call.method) {
    case 'findKeys':
      return { value: token.findKeys(call.label), transfer: [] };
    case 'generateKey':
      return { value: token.generateKey(call.label), transfer: [] };
    case 'encrypt': {
      const plaintext = buffer(call.plaintext);
      try {
        return moved(token.encrypt(keyOf(call.key), plaintext, buffer(call.associatedData)));
      } finally {
        wipe(plaintext);
      }
    }
    case 'decrypt': {
      const plaintext = token.decrypt(keyOf(call.key), buffer(call.sealed), buffer(call.associatedData));
      return plaintext === undefined ? { value: undefined, transfer: [] } : moved(plaintext);
    }
    case 'destroy':
      token.destroy(keyOf(call.key));
      return { value: undefined, transfer: [] };
    case 'close':
      token.close();
      return { value: undefined, transfer: [] };
  }
}

let token: Pkcs11Token;
try {
  token = Pkcs11Token.open(workerData as Pkcs11TokenOptions);
  port.postMessage({ id: 0, value: 'ready' } satisfies TokenReply);
} catch (error) {
  port.postMessage({ id: 0, failure: failureOf(error) } satisfies TokenReply);
  port.close();
}

port.on('message', (call: TokenCall) => {
  if (call.method !== 'close' && Date.now() > call.expiresAt) {
    // Queued behind a call the token took too long over: its caller has failed it already.
    port.postMessage({ id: call.id, failure: { message: 'expired while the token was busy' } } satisfies TokenReply);
    return;
  }
  try {
    const { value, transfer } = run(token, call);
    port.postMessage({ id: call.id, value } satisfies TokenReply, transfer);
  } catch (error) {
    port.postMessage({ id: call.id, failure: failureOf(error) } satisfies TokenReply);
  }
  if (call.method === 'close') port.close();
});
