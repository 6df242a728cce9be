/**
 * The backup file of a deployment: the files a data directory needs to start
 * again (database, key manager's files, CA, admin token) in one archive,
 * sealed with AES-256-GCM under a key derived from a passphrase by scrypt,
 * with the parameters and code of export bundles (src/vault/bundle.ts). The
 * archive holds the master key, so nothing of it is ever written unsealed.
 * The header is the associated data: any change to any byte makes the file
 * unreadable.
 *
 * Layout: "VTPMBKUP" | header length (uint32 BE) | header JSON | sealed archive.
 * Archive: manifest length (uint32 BE) | manifest JSON | the files' bytes, in the manifest's order.
 */
import { randomBytes } from 'node:crypto';
import { type Static, Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { InvalidBackupError } from '../errors.js';
import { open, seal } from '../keys/aead.js';
import { withWipedSync } from '../keys/wiped.js';
import { checkPassphrase, deriveKey, SCRYPT } from '../vault/bundle.js';

const MAGIC = Buffer.from('VTPMBKUP');
const FORMAT = 1;
const MAX_HEADER = 4096;

export interface BackupFile {
  /** Relative to the data directory. */
  path: string;
  data: Buffer;
}

/**
 * Where a restored file may go: the database, the admin token, and what lies under keys/ and ca/, by plain
 * names only (no `..`, nothing hidden), so that no archive can write outside the directory it is restored to.
 */
const PATH = '^(vtpm\\.sqlite|admin\\.token|(keys|ca)(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+)$';

const ManifestSchema = Type.Object({
  created_at: Type.String(),
  /** The backend whose files are in it; the restored deployment starts with the same. */
  key_manager: Type.String(),
  /** The migrations its database has run: a newer version's schema is refused at restore. */
  migrations: Type.Array(Type.String()),
  files: Type.Array(Type.Object({ path: Type.String({ pattern: PATH }), size: Type.Integer({ minimum: 0 }) })),
});
export type BackupManifest = Omit<Static<typeof ManifestSchema>, 'files'>;

/** This format's KDF parameters only: a file cannot make a restore spend more than a backup of its own costs. */
const HeaderSchema = Type.Object({
  format: Type.Literal(FORMAT),
  kdf: Type.Literal('scrypt'),
  n: Type.Literal(SCRYPT.N),
  r: Type.Literal(SCRYPT.r),
  p: Type.Literal(SCRYPT.p),
  salt: Type.String({ pattern: '^[A-Za-z0-9+/]{22}==$' }),
  created_at: Type.String(),
});
type Header = Static<typeof HeaderSchema>;

function uint32(value: number): Buffer {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(value);
  return bytes;
}

/** The archive in memory, unsealed: the caller zeroes it once it is sealed. */
export function archive(manifest: BackupManifest, files: readonly BackupFile[]): Buffer {
  const listed = JSON.stringify({ ...manifest, files: files.map((f) => ({ path: f.path, size: f.data.length })) });
  return Buffer.concat([uint32(Buffer.byteLength(listed)), Buffer.from(listed), ...files.map((f) => f.data)]);
}

export async function sealBackup(unsealed: Buffer, passphrase: string): Promise<Buffer> {
  checkPassphrase(passphrase);
  const header: Header = {
    format: FORMAT,
    kdf: 'scrypt',
    n: SCRYPT.N,
    r: SCRYPT.r,
    p: SCRYPT.p,
    salt: randomBytes(16).toString('base64'),
    created_at: new Date().toISOString(),
  };
  const headerText = JSON.stringify(header);
  const sealed = withWipedSync(await deriveKey(passphrase, header), (key) => seal(key, unsealed, headerText));
  return Buffer.concat([MAGIC, uint32(Buffer.byteLength(headerText)), Buffer.from(headerText), sealed]);
}

function damaged(reason: string): InvalidBackupError {
  return new InvalidBackupError(`the file is not a readable vtpm-manager backup: ${reason}`, { reason });
}

function parsed<T>(text: string, schema: typeof HeaderSchema | typeof ManifestSchema, what: string): T {
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

export interface OpenedBackup {
  manifest: BackupManifest;
  files: BackupFile[];
  /** The unsealed archive the files are views of: the caller zeroes it when it is done with them. */
  unsealed: Buffer;
}

export async function openBackup(file: Buffer, passphrase: string): Promise<OpenedBackup> {
  if (file.length < MAGIC.length + 4 || !file.subarray(0, MAGIC.length).equals(MAGIC))
    throw damaged('it does not start with the backup signature (a bundle of `vtpm export` is restored by vtpm import)');
  const headerLength = file.readUInt32BE(MAGIC.length);
  const headerEnd = MAGIC.length + 4 + headerLength;
  if (headerLength > MAX_HEADER || headerEnd > file.length) throw damaged('it is truncated');
  const headerText = file.subarray(MAGIC.length + 4, headerEnd).toString();
  const header = parsed<Header>(headerText, HeaderSchema, 'header');
  const unsealed = withWipedSync(await deriveKey(passphrase, header), (key) => {
    try {
      return open(key, file.subarray(headerEnd), headerText, 'the backup');
    } catch {
      throw new InvalidBackupError(
        'the backup failed authentication: the passphrase is wrong, or the file was truncated or altered',
      );
    }
  });
  // Authenticated, so sealed by whoever knew the passphrase; its content is still checked before it is used.
  const manifestLength = unsealed.length >= 4 ? unsealed.readUInt32BE(0) : Number.POSITIVE_INFINITY;
  if (4 + manifestLength > unsealed.length) throw damaged('its manifest is truncated');
  const { files: listed, ...manifest } = parsed<Static<typeof ManifestSchema>>(
    unsealed.subarray(4, 4 + manifestLength).toString(),
    ManifestSchema,
    'manifest',
  );
  const files: BackupFile[] = [];
  let offset = 4 + manifestLength;
  for (const { path, size } of listed) {
    if (offset + size > unsealed.length) throw damaged(`${path} is truncated`);
    files.push({ path, data: unsealed.subarray(offset, offset + size) });
    offset += size;
  }
  if (offset !== unsealed.length) throw damaged('it holds more than its manifest lists');
  if (new Set(listed.map((f) => f.path)).size !== listed.length) throw damaged('it lists a file twice');
  return { manifest, files, unsealed };
}
