/**
 * The backup file of a deployment: the files a data directory needs to start
 * again (database, key manager's files, CA, admin token) in one archive,
 * sealed like export bundles (keys/passphrase-envelope.ts). The archive
 * holds the master key, so nothing of it is ever written unsealed.
 *
 * Archive: manifest length (uint32 BE) | manifest JSON | the files' bytes, in the manifest's order.
 */
import { type Static, Type } from '@sinclair/typebox';
import { InvalidBackupError } from '../errors.js';
import { type EnvelopeFormat, openWithPassphrase, parsedAs, sealWithPassphrase } from '../keys/passphrase-envelope.js';

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

function damaged(reason: string): InvalidBackupError {
  return new InvalidBackupError(`the file is not a readable vtpm-manager backup: ${reason}`, { reason });
}

const BACKUP: EnvelopeFormat<Record<never, never>> = {
  magic: Buffer.from('VTPMBKUP'),
  fields: {},
  what: 'the backup',
  damaged,
  notThisFormat: 'it does not start with the backup signature (a bundle of `vtpm export` is restored by vtpm import)',
  unauthenticated: () =>
    new InvalidBackupError(
      'the backup failed authentication: the passphrase is wrong, or the file was truncated or altered',
    ),
};

export function sealBackup(unsealed: Buffer, passphrase: string): Promise<Buffer> {
  return sealWithPassphrase(BACKUP, {}, unsealed, passphrase);
}

export interface OpenedBackup {
  manifest: BackupManifest;
  files: BackupFile[];
  /** The unsealed archive the files are views of: the caller zeroes it when it is done with them. */
  unsealed: Buffer;
}

export async function openBackup(file: Buffer, passphrase: string): Promise<OpenedBackup> {
  const unsealed = await openWithPassphrase(BACKUP, file, passphrase);
  // Authenticated, so sealed by whoever knew the passphrase; its content is still checked before it is used.
  const manifestLength = unsealed.length >= 4 ? unsealed.readUInt32BE(0) : Number.POSITIVE_INFINITY;
  if (4 + manifestLength > unsealed.length) throw damaged('its manifest is truncated');
  const { files: listed, ...manifest } = parsedAs<Static<typeof ManifestSchema>>(
    unsealed.subarray(4, 4 + manifestLength).toString(),
    ManifestSchema,
    'manifest',
    damaged,
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
