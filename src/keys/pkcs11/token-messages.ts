/** What the key manager's thread and the token's worker thread (token-worker.ts) send each other. */
import type { TokenKey } from './token.js';

export type TokenRequest =
  | { method: 'findKeys'; label: string }
  | { method: 'generateKey'; label: string }
  | { method: 'encrypt'; key: TokenKey; plaintext: Uint8Array; associatedData: Uint8Array }
  | { method: 'decrypt'; key: TokenKey; sealed: Uint8Array; associatedData: Uint8Array }
  | { method: 'destroy'; key: TokenKey }
  | { method: 'close' };

/** `expiresAt`: the caller has given up by then (Date.now() time); a call still queued is not run. */
export type TokenCall = TokenRequest & { id: number; expiresAt: number };

/** Every failure of the token is the key manager's (KeyManagerError), with the message the token gave. */
export interface TokenFailure {
  message: string;
  details?: Record<string, unknown>;
}

/** `id` 0 answers the opening: `ready`, or why the token could not be opened. */
export type TokenReply = { id: number } & ({ value: unknown } | { failure: TokenFailure });
