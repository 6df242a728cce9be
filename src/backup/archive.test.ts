import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError, InvalidBackupError } from '../errors.js';
import { archive, openBackup, sealBackup } from './archive.js';

const PASSPHRASE = 'correct horse battery staple';
const manifest = { created_at: '2026-01-01T00:00:00.000Z', key_manager: 'local', migrations: ['0001_initial'] };
const files = [
  { path: 'vtpm.sqlite', data: Buffer.from('the database') },
  { path: 'keys/master.key', data: Buffer.alloc(32, 0xa5) },
  { path: 'ca/certserial', data: Buffer.from('7') },
  { path: 'admin.token', data: Buffer.alloc(0) },
];

function refusedAs(pattern: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof InvalidBackupError, String(error));
    assert.match(error.message, pattern);
    return true;
  };
}

describe('backup archive', () => {
  it('opens what it sealed: the manifest and every file, byte for byte', async () => {
    const opened = await openBackup(await sealBackup(archive(manifest, files), PASSPHRASE), PASSPHRASE);
    assert.deepEqual(opened.manifest, manifest);
    assert.deepEqual(
      opened.files.map((f) => [f.path, f.data.toString('hex')]),
      files.map((f) => [f.path, f.data.toString('hex')]),
    );
  });

  it('holds nothing in the clear: not the master key, not a file name', async () => {
    const sealed = await sealBackup(archive(manifest, files), PASSPHRASE);
    assert.equal(sealed.indexOf(Buffer.alloc(32, 0xa5)), -1);
    assert.equal(sealed.indexOf(Buffer.from('master.key')), -1);
  });

  it('refuses a short passphrase before sealing', async () => {
    await assert.rejects(sealBackup(archive(manifest, files), 'short'), InvalidArgumentError);
  });

  it('refuses a wrong passphrase, a changed byte, a truncation and another kind of file', async () => {
    const sealed = await sealBackup(archive(manifest, files), PASSPHRASE);
    const authentication = /failed authentication: the passphrase is wrong, or the file was truncated or altered/;
    await assert.rejects(openBackup(sealed, 'another passphrase entirely'), refusedAs(authentication));
    const flipped = Buffer.from(sealed);
    flipped[flipped.length - 3]! ^= 0x01;
    await assert.rejects(openBackup(flipped, PASSPHRASE), refusedAs(authentication));
    await assert.rejects(openBackup(sealed.subarray(0, sealed.length - 10), PASSPHRASE), refusedAs(authentication));
    await assert.rejects(openBackup(sealed.subarray(0, 20), PASSPHRASE), refusedAs(/truncated/));
    await assert.rejects(openBackup(Buffer.from('VTPMBNDL....'), PASSPHRASE), refusedAs(/backup signature/));
    const header = Buffer.from(sealed);
    header[header.indexOf(Buffer.from('"n":')) + 4] = '9'.charCodeAt(0);
    await assert.rejects(openBackup(header, PASSPHRASE), refusedAs(/header is not one this version understands/));
  });

  it('refuses files that would land outside the data directory, even sealed with the passphrase', async () => {
    for (const path of ['../etc/passwd', '/etc/passwd', 'keys/../../x', 'tpm/vm/state', 'ca/.lock', 'keys']) {
      const sealed = await sealBackup(archive(manifest, [{ path, data: Buffer.from('x') }]), PASSPHRASE);
      await assert.rejects(openBackup(sealed, PASSPHRASE), refusedAs(/manifest is not one this version understands/));
    }
  });
});
