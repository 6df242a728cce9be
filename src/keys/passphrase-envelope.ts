/**
 * The sealed file format that export bundles (vault/bundle.ts) and deployment
 * backups (backup/archive.ts) share: AES-256-GCM under a key derived from a
 * passphrase by scrypt, with the header (format, KDF parameters and the
 * file's own fields) as the associated data, so that changing any byte of the
 * file makes it unreadable.
 *
 * Layout: MAGIC (8 bytes) | header length (uint32 BE) | header JSON | sealed content.
 */
import { randomBytes, scrypt } from 'node:crypto';
import { type TProperties, type TSchema, Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { InvalidArgumentError, type VtpmError } from '../errors.js';
import { KEY_BYTES, open, seal } from './aead.js';
import { withWipedSync } from './wiped.js';

const FORMAT = 1;
const MAX_HEADER = 4096;
const MIN_PASSPHRASE = 12;
/** 2^15 x 8 x 128 bytes = 32 MiB of memory per guess. */
const SCRYPT = { N: 2 ** 15, r: 8, p: 1 };

export interface EnvelopeFormat<Fields extends TProperties> {
  magic: Buffer;
  /** The file's own header fields, besides the format's. */
  fields: Fields;
  /** What the file is, for messages: "the bundle". */
  what: string;
  /** The error for a file that is not one: truncated, malformed, another format. */
  damaged: (reason: string) => VtpmError;
  /** The error for a file whose signature is not this format's. */
  notThisFormat: string;
  /** The error for a wrong passphrase or an altered file (the two cannot be told apart). */
  unauthenticated: () => VtpmError;
}

export function checkPassphrase(passphrase: string): void {
  if (passphrase.length < MIN_PASSPHRASE)
    throw new InvalidArgumentError('passphrase', `at least ${MIN_PASSPHRASE} characters`);
}

interface KdfParameters {
  n: number;
  r: number;
  p: number;
  salt: string;
}

/** On libuv's thread pool: 32 MiB and a tenth of a second of work per file must not hold up every other request. */
function deriveKey(passphrase: string, header: KdfParameters): Promise<Buffer> {
  const options = { N: header.n, r: header.r, p: header.p, maxmem: 256 * header.n * header.r };
  return new Promise((resolve, reject) =>
    scrypt(passphrase, Buffer.from(header.salt, 'base64'), KEY_BYTES, options, (error, key) =>
      error ? reject(error) : resolve(key),
    ),
  );
}

function uint32(value: number): Buffer {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(value);
  return bytes;
}

export async function sealWithPassphrase<Fields extends TProperties>(
  format: EnvelopeFormat<Fields>,
  fields: Record<keyof Fields, string>,
  content: Buffer,
  passphrase: string,
): Promise<Buffer> {
  checkPassphrase(passphrase);
  const header = {
    format: FORMAT,
    kdf: 'scrypt',
    n: SCRYPT.N,
    r: SCRYPT.r,
    p: SCRYPT.p,
    salt: randomBytes(16).toString('base64'),
    ...fields,
    created_at: new Date().toISOString(),
  };
  const headerText = JSON.stringify(header);
  const sealed = withWipedSync(await deriveKey(passphrase, header), (key) => seal(key, content, headerText));
  return Buffer.concat([format.magic, uint32(Buffer.byteLength(headerText)), Buffer.from(headerText), sealed]);
}

/**
 * The header of the one format there is: its KDF parameters are this format's, not the file's, so a file
 * cannot make the service spend more memory or time than one of its own costs.
 */
function headerSchema(fields: TProperties): TSchema {
  return Type.Object({
    format: Type.Literal(FORMAT),
    kdf: Type.Literal('scrypt'),
    n: Type.Literal(SCRYPT.N),
    r: Type.Literal(SCRYPT.r),
    p: Type.Literal(SCRYPT.p),
    salt: Type.String({ pattern: '^[A-Za-z0-9+/]{22}==$' }),
    ...fields,
    created_at: Type.String(),
  });
}

/** JSON read against its schema; anything else is the format's `damaged` error, naming the first problem. */
export function parsedAs<T>(text: string, schema: TSchema, what: string, damaged: (reason: string) => VtpmError): T {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw damaged(`its ${what} is not JSON`);
  }
  const [first] = Value.Errors(schema, value);
  if (first) throw damaged(`its ${what} is not one this version understands (${first.path || '/'}: ${first.message})`);
  return value as T;
}

/** The content, authenticated, in memory: the caller zeroes it when it is done with it. */
export async function openWithPassphrase<Fields extends TProperties>(
  format: EnvelopeFormat<Fields>,
  file: Buffer,
  passphrase: string,
): Promise<Buffer> {
  const { magic } = format;
  if (file.length < magic.length + 4 || !file.subarray(0, magic.length).equals(magic))
    throw format.damaged(format.notThisFormat);
  const headerLength = file.readUInt32BE(magic.length);
  const headerEnd = magic.length + 4 + headerLength;
  if (headerLength > MAX_HEADER || headerEnd > file.length) throw format.damaged('it is truncated');
  const headerText = file.subarray(magic.length + 4, headerEnd).toString();
  const header = parsedAs<KdfParameters>(headerText, headerSchema(format.fields), 'header', format.damaged);
  return withWipedSync(await deriveKey(passphrase, header), (key) => {
    try {
      return open(key, file.subarray(headerEnd), headerText, format.what);
    } catch {
      throw format.unauthenticated();
    }
  });
}
