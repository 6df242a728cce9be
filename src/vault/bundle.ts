/**
 * Export bundles: a vTPM in one portable file, to move it to another
 * deployment or keep it outside the fleet. It holds the spec, the owner, the
 * EK certificates, the chosen state generations, and the vTPM's own secret
 * (swtpm's state is encrypted under it), all sealed with AES-256-GCM under a
 * key derived from a passphrase by scrypt. The header, which names the format
 * and the KDF parameters, is the associated data: changing any byte of the
 * file makes it unreadable.
 *
 * Layout: "VTPMBNDL" | header length (uint32 BE) | header JSON | sealed payload.
 * The passphrase travels separately from the file (see docs/vault.md).
 */
import { randomBytes, scrypt } from 'node:crypto';
import { type TSchema, Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { InvalidArgumentError, InvalidBundleError } from '../errors.js';
import { KEY_BYTES, open, seal } from '../keys/aead.js';
import { withWipedSync } from '../keys/wiped.js';
import { TPM_MODELS, TPM_VERSIONS } from '../tpm-spec/tpm-spec.js';

const MAGIC = Buffer.from('VTPMBNDL');
const FORMAT = 1;
const MIN_PASSPHRASE = 12;
/** 2^15 x 8 x 128 bytes = 32 MiB of memory per guess. Deployment backups (src/backup) are sealed the same way. */
export const SCRYPT = { N: 2 ** 15, r: 8, p: 1 };

export interface BundleGeneration {
  kind: string;
  generation: number;
  reason: string;
  created_at: string;
  data: Buffer;
}

export interface BundlePayload {
  vm: string;
  project: string;
  version: string;
  model: string;
  firmware: string;
  secure_boot: boolean;
  secret: Buffer;
  ek_certificates: Array<{ key_type: string; der: Buffer }>;
  /** Oldest first, per kind. */
  generations: BundleGeneration[];
}

interface Header {
  format: number;
  kdf: 'scrypt';
  n: number;
  r: number;
  p: number;
  salt: string;
  vm: string;
  created_at: string;
}

/** What a sealed file's header says of the key derivation. */
export type KdfParameters = Pick<Header, 'n' | 'r' | 'p' | 'salt'>;

export function checkPassphrase(passphrase: string): void {
  if (passphrase.length < MIN_PASSPHRASE)
    throw new InvalidArgumentError('passphrase', `at least ${MIN_PASSPHRASE} characters`);
}

/** On libuv's thread pool: 32 MiB and a tenth of a second of work per bundle must not hold up every other request. */
export function deriveKey(passphrase: string, header: KdfParameters): Promise<Buffer> {
  const options = { N: header.n, r: header.r, p: header.p, maxmem: 256 * header.n * header.r };
  return new Promise((resolve, reject) =>
    scrypt(passphrase, Buffer.from(header.salt, 'base64'), KEY_BYTES, options, (error, key) =>
      error ? reject(error) : resolve(key),
    ),
  );
}

const b64 = (b: Buffer) => b.toString('base64');

export async function writeBundle(payload: BundlePayload, passphrase: string): Promise<Buffer> {
  checkPassphrase(passphrase);
  const header: Header = {
    format: FORMAT,
    kdf: 'scrypt',
    n: SCRYPT.N,
    r: SCRYPT.r,
    p: SCRYPT.p,
    salt: b64(randomBytes(16)),
    vm: payload.vm,
    created_at: new Date().toISOString(),
  };
  const headerText = JSON.stringify(header);
  const plaintext = Buffer.from(
    JSON.stringify({
      ...payload,
      secret: b64(payload.secret),
      ek_certificates: payload.ek_certificates.map((c) => ({ key_type: c.key_type, der: b64(c.der) })),
      generations: payload.generations.map((g) => ({ ...g, data: b64(g.data) })),
    }),
  );
  const sealed = withWipedSync(await deriveKey(passphrase, header), (key) => seal(key, plaintext, headerText));
  const length = Buffer.alloc(4);
  length.writeUInt32BE(Buffer.byteLength(headerText));
  return Buffer.concat([MAGIC, length, Buffer.from(headerText), sealed]);
}

function damaged(reason: string): InvalidBundleError {
  return new InvalidBundleError(`the bundle is not a readable vtpm-manager export: ${reason}`, { reason });
}

const Base64 = Type.String({ pattern: '^[A-Za-z0-9+/]*={0,2}$' });
const literals = (values: readonly string[]): TSchema => Type.Union(values.map((value) => Type.Literal(value)));

/**
 * The header of the one format there is: its KDF parameters are this format's, not the file's, so a
 * bundle cannot make the service spend more memory or time than an export of its own costs.
 */
const HeaderSchema = Type.Object({
  format: Type.Literal(FORMAT),
  kdf: Type.Literal('scrypt'),
  n: Type.Literal(SCRYPT.N),
  r: Type.Literal(SCRYPT.r),
  p: Type.Literal(SCRYPT.p),
  salt: Base64,
  vm: Type.String(),
  created_at: Type.String(),
});

/**
 * What an authenticated bundle must hold. Authentication proves only that whoever sealed it knew the
 * passphrase, and the caller chooses both: the content is input like any other.
 */
const PayloadSchema = Type.Object({
  vm: Type.String(),
  project: Type.String(),
  version: literals(TPM_VERSIONS),
  model: literals(TPM_MODELS),
  firmware: Type.String(),
  secure_boot: Type.Boolean(),
  secret: Type.String({ pattern: '^[A-Za-z0-9+/]{43}=$', description: '32 bytes' }),
  ek_certificates: Type.Array(Type.Object({ key_type: Type.String(), der: Base64 })),
  generations: Type.Array(
    Type.Object({
      kind: literals(['tpm', 'nvram']),
      generation: Type.Integer({ minimum: 1 }),
      reason: Type.String(),
      created_at: Type.String(),
      data: Base64,
    }),
  ),
});

function parsed<T>(text: string, schema: TSchema, what: string): T {
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

export async function readBundle(bundle: Buffer, passphrase: string): Promise<BundlePayload> {
  if (bundle.length < MAGIC.length + 4 || !bundle.subarray(0, MAGIC.length).equals(MAGIC))
    throw damaged('it does not start with the bundle signature');
  const headerLength = bundle.readUInt32BE(MAGIC.length);
  const headerEnd = MAGIC.length + 4 + headerLength;
  if (headerLength > 4096 || headerEnd > bundle.length) throw damaged('it is truncated');
  const headerText = bundle.subarray(MAGIC.length + 4, headerEnd).toString();
  const header = parsed<Header>(headerText, HeaderSchema, 'header');
  const plaintext = withWipedSync(await deriveKey(passphrase, header), (key) => {
    try {
      return open(key, bundle.subarray(headerEnd), headerText, 'the bundle');
    } catch {
      throw new InvalidBundleError(
        'the bundle failed authentication: the passphrase is wrong, or the file was truncated or altered',
      );
    }
  });
  const payload = parsed<
    Omit<BundlePayload, 'secret' | 'ek_certificates' | 'generations'> & {
      secret: string;
      ek_certificates: Array<{ key_type: string; der: string }>;
      generations: Array<Omit<BundleGeneration, 'data'> & { data: string }>;
    }
  >(plaintext.toString(), PayloadSchema, 'content');
  if (!payload.generations.some((g) => g.kind === 'tpm')) throw damaged('it holds no TPM state');
  return {
    ...payload,
    secret: Buffer.from(payload.secret, 'base64'),
    ek_certificates: payload.ek_certificates.map((c) => ({ key_type: c.key_type, der: Buffer.from(c.der, 'base64') })),
    generations: payload.generations.map((g) => ({ ...g, data: Buffer.from(g.data, 'base64') })),
  };
}
