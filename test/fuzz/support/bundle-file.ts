/**
 * A bundle opened the way the test's own reader does it, independently of
 * the product's: its content as JSON, and a way to seal other content under
 * the same header and passphrase (what a caller who knows the passphrase can
 * always do).
 */
import { scryptSync } from 'node:crypto';
import { open, seal } from '../../../src/keys/aead.js';

export interface OpenedBundle {
  content: unknown;
  /** `value` sealed as a bundle with the same header, salt and passphrase. */
  sealed(value: unknown): Buffer;
}

export function openBundle(bundle: Buffer, passphrase: string): OpenedBundle {
  const headerEnd = 12 + bundle.readUInt32BE(8);
  const headerText = bundle.subarray(12, headerEnd).toString();
  const header = JSON.parse(headerText) as { n: number; r: number; p: number; salt: string };
  const key = scryptSync(passphrase, Buffer.from(header.salt, 'base64'), 32, {
    N: header.n,
    r: header.r,
    p: header.p,
    maxmem: 256 * header.n * header.r,
  });
  return {
    content: JSON.parse(open(key, bundle.subarray(headerEnd), headerText, 'the bundle').toString()) as unknown,
    sealed: (value) =>
      Buffer.concat([
        bundle.subarray(0, headerEnd),
        seal(key, Buffer.from(JSON.stringify(value) ?? 'null'), headerText),
      ]),
  };
}

/** The code of an answer in the product's error shape, or undefined when it is not in that shape. */
export function errorCodeOf(text: string): string | undefined {
  let parsed: { error?: { code?: unknown; message?: unknown } } | null;
  try {
    parsed = JSON.parse(text) as typeof parsed;
  } catch {
    return undefined;
  }
  return typeof parsed?.error?.code === 'string' && typeof parsed.error.message === 'string'
    ? parsed.error.code
    : undefined;
}
