/**
 * A backup of a running deployment and its restore, as an operator does it:
 * a real `vtpm serve` whose guest wrote an NV index into its vTPM, a backup
 * taken while vTPMs run and while a create and a key rotation run beside it,
 * the restore onto a fresh data directory, a second `vtpm serve` there, and a
 * real guest on a restored vTPM that reads its NV index back. Then what an
 * operator gets wrong: the passphrase, a damaged file, a directory in use or
 * not empty, a member's token; and what an older binary does with a newer
 * schema.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { buildInitramfs, findKernel, GUEST_NV_DATA, responseCode } from './support/guest.js';
import {
  bootNvGuest,
  CLI,
  type CliResult,
  serveRefusal,
  ServiceUnderTest,
  temporaryDir,
  type VtpmJson,
} from './support/service.js';

let workDir = '';
let kernel = '';
let initramfs = '';
let passphraseFile = '';
const services: ServiceUnderTest[] = [];

/** The CLI with no service's environment: a restore runs offline, on the directory it is given. */
function vtpm(...args: string[]): Promise<CliResult> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const name of ['VTPM_URL', 'VTPM_DATA_DIR', 'VTPM_TOKEN', 'VTPM_BUNDLE_PASSPHRASE']) delete env[name];
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env }, (error, stdout, stderr) =>
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** The service's JSON log lines (pino's), whatever order their fields come in. */
function logLines(service: ServiceUnderTest): Array<Record<string, unknown>> {
  return service.log
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

async function started(dataDir: string, args: string[] = []): Promise<ServiceUnderTest> {
  const service = await ServiceUnderTest.start(dataDir, ['--pool-size', '0', ...args]);
  services.push(service);
  return service;
}

before(async () => {
  workDir = await temporaryDir('vtpm-backup');
  kernel = await findKernel();
  initramfs = await buildInitramfs(workDir);
  passphraseFile = join(workDir, 'passphrase');
  await writeFile(passphraseFile, 'a backup passphrase of some length\n', { mode: 0o600 });
});

after(async () => {
  for (const service of services) {
    for (const vtpm of await service.json<VtpmJson[]>('list').catch(() => [])) await service.cli('stop', vtpm.vm);
    await service.stop();
  }
  if (workDir) await rm(workDir, { recursive: true, force: true });
});

describe('vtpm backup', () => {
  const original = () => join(workDir, 'original');
  const backupFile = () => join(workDir, 'deployment.backup');
  const vm = randomUUID();

  it('backs up a running deployment consistently; a guest on the restored one reads back what it wrote', async () => {
    const service = await started(original(), ['--log-level', 'info']);
    const lines = logLines(service);
    const migrations = lines.filter((line) => line.msg === 'database migration applied').map((line) => line.migration);
    assert.equal(migrations[0], '0001_initial', 'each migration a fresh database runs is logged');
    assert.ok(migrations.length >= 8, JSON.stringify(migrations));
    const warnings = lines.filter((line) => String(line.msg).startsWith('the master key is in plaintext on disk'));
    assert.equal(warnings.length, 1, 'one warning of the plaintext master key');
    assert.ok([40, 'warn'].includes(warnings[0]!.level as number | string), JSON.stringify(warnings[0]));
    assert.equal(warnings[0]!.file, join(original(), 'keys', 'master.key'));
    assert.match(String(warnings[0]!.msg), /--seal-to-tpm.*--key-manager pkcs11/);
    await service.json('create', '--vm', vm, '--version', '2.0');
    const first = await bootNvGuest(service, vm, { kernel, initramfs });
    assert.equal(responseCode(first.responses['3-write']!), 0, 'the guest wrote its NV index');
    const certificate = await service.json('ek', vm);
    // Running at the backup: its swtpm keeps syncing meanwhile, and its newest state is the vault's.
    await service.json('start', vm);
    const running = randomUUID();
    await service.json('create', '--vm', running, '--version', '1.2');
    await service.json('start', running);

    // A create and a key rotation while the backup is taken: whatever the copy holds must open.
    const besides = randomUUID();
    const [taken, created, rotated] = await Promise.all([
      service.cli('--json', 'backup', 'create', '--out', backupFile(), '--passphrase-file', passphraseFile),
      service.cli('--json', 'create', '--vm', besides, '--version', '2.0'),
      service.cli('--json', 'keys', 'rotate'),
    ]);
    assert.equal(taken.code, 0, taken.stderr);
    assert.equal(created.code, 0, created.stderr);
    assert.equal(rotated.code, 0, rotated.stderr);
    assert.ok((JSON.parse(taken.stdout) as { files: number }).files >= 8, taken.stdout);
    assert.equal((await stat(backupFile())).mode & 0o777, 0o600);
    await service.json('stop', vm);
    await service.json('stop', running);

    const restoredDir = join(workDir, 'restored');
    const restore = await vtpm(
      '--json',
      'backup',
      'restore',
      backupFile(),
      '--data-dir',
      restoredDir,
      '--passphrase-file',
      passphraseFile,
    );
    assert.equal(restore.code, 0, restore.stderr);
    assert.equal((JSON.parse(restore.stdout) as { key_manager: string }).key_manager, 'local');

    const restored = await started(restoredDir);
    const vtpms = await restored.json<VtpmJson[]>('list');
    assert.ok(vtpms.some((v) => v.vm === vm) && vtpms.some((v) => v.vm === running), JSON.stringify(vtpms));
    // Every vTPM of the copy opens under the copy's keys, whichever side of the rotation and the create it fell.
    for (const each of vtpms) {
      assert.equal(each.status, 'stopped', `${each.vm} was running at the backup and is stopped here`);
      if (each.vm === vm) continue;
      assert.equal((await restored.json<VtpmJson>('start', each.vm)).status, 'running');
      await restored.json('stop', each.vm);
    }
    assert.deepEqual(await restored.json('ek', vm), certificate, 'the same EK certificate, from the same CA');
    for (const file of ['issuercert.pem', 'signkey.pem', 'swtpm-localca-rootca-cert.pem']) {
      const [was, is] = await Promise.all([original(), restoredDir].map((dir) => readFile(join(dir, 'ca', file))));
      assert.ok(was!.equals(is!), `the CA's ${file} is restored`);
    }
    const second = await bootNvGuest(restored, vm, { kernel, initramfs });
    assert.ok(second.responses['1-data']!.includes(GUEST_NV_DATA), 'the restored vTPM holds what the guest wrote');
    assert.deepEqual(second.responses['7-ekpublic'], first.responses['7-ekpublic'], 'the same EK');
  });

  it('holds no key in the clear: not the master key, not a secret file, not the database', async () => {
    const backup = await readFile(backupFile());
    // The restored directory's master key is the very one the backup holds (a rotation ran beside the backup).
    for (const dir of [join(workDir, 'restored'), original()]) {
      const master = await readFile(join(dir, 'keys', 'master.key'));
      assert.equal(master.length, 32);
      assert.equal(backup.indexOf(master), -1, `the master key of ${dir} is not in the file`);
    }
    assert.equal(backup.indexOf(await readFile(join(original(), 'admin.token'))), -1, 'nor the admin token');
    assert.equal(backup.indexOf(Buffer.from('SQLite format 3')), -1, 'nor the database');
  });

  it('refuses a wrong passphrase and a damaged file with exit 6, writing nothing', async () => {
    const target = join(workDir, 'never-written');
    const wrongFile = join(workDir, 'wrong-passphrase');
    await writeFile(wrongFile, 'not the passphrase it was sealed with\n', { mode: 0o600 });
    const wrong = await vtpm('backup', 'restore', backupFile(), '--data-dir', target, '--passphrase-file', wrongFile);
    assert.equal(wrong.code, 6, wrong.stderr);
    assert.match(wrong.stderr, /the backup failed authentication: the passphrase is wrong.*\[invalid_backup\]/);

    const damaged = Buffer.from(await readFile(backupFile()));
    damaged[Math.floor(damaged.length / 2)]! ^= 0x40;
    const damagedFile = join(workDir, 'damaged.backup');
    await writeFile(damagedFile, damaged);
    const refused = await vtpm(
      'backup',
      'restore',
      damagedFile,
      '--data-dir',
      target,
      '--passphrase-file',
      passphraseFile,
    );
    assert.equal(refused.code, 6, refused.stderr);
    assert.match(refused.stderr, /failed authentication.*truncated or altered/);

    const bundleLike = join(workDir, 'not-a-backup');
    await writeFile(bundleLike, 'VTPMBNDL this is something else');
    const other = await vtpm(
      'backup',
      'restore',
      bundleLike,
      '--data-dir',
      target,
      '--passphrase-file',
      passphraseFile,
    );
    assert.equal(other.code, 6, other.stderr);
    assert.match(other.stderr, /not a readable vtpm-manager backup: it does not start with the backup signature/);
    await assert.rejects(stat(target), 'nothing was made for a backup that does not open');
  });

  it('refuses a directory a service runs on, and replaces a used one only when told to and confirmed', async () => {
    const inUse = await vtpm(
      'backup',
      'restore',
      backupFile(),
      '--data-dir',
      join(workDir, 'restored'),
      '--force',
      '--yes',
      '--passphrase-file',
      passphraseFile,
    );
    assert.equal(inUse.code, 6, inUse.stderr);
    assert.match(inUse.stderr, /is in use by another process \(vtpm serve, pid \d+\)/);

    const used = join(workDir, 'used');
    const restore = (...flags: string[]) =>
      vtpm('backup', 'restore', backupFile(), '--data-dir', used, '--passphrase-file', passphraseFile, ...flags);
    assert.equal((await restore()).code, 0);
    const notEmpty = await restore();
    assert.equal(notEmpty.code, 4, notEmpty.stderr);
    assert.match(notEmpty.stderr, /is not empty \(.*\): restore onto a fresh directory, or pass --force/);
    const unconfirmed = await restore('--force');
    assert.equal(unconfirmed.code, 2, unconfirmed.stderr);
    assert.match(unconfirmed.stderr, /no terminal to ask on: pass --yes/);
    await writeFile(join(used, 'left-over'), 'x');
    assert.equal((await restore('--force', '--yes')).code, 0);
    await assert.rejects(stat(join(used, 'left-over')), 'what the directory held is gone');
  });

  it('is for admins only', async () => {
    const [service] = services;
    const { token } = await service!.json<{ token: string }>(
      'user',
      'create',
      'alice',
      '--project',
      'p1',
      '--role',
      'member',
    );
    const denied = await service!.cliAs(
      token,
      'backup',
      'create',
      '--out',
      join(workDir, 'alice.backup'),
      '--passphrase-file',
      passphraseFile,
    );
    assert.equal(denied.code, 8, denied.stderr);
    assert.match(denied.stderr, /alice may not back up the deployment: this needs the admin role/);
  });

  it('an older vtpm-manager refuses a database a newer one migrated, naming both schema versions', async () => {
    const dataDir = join(workDir, 'used');
    const sqlite = new Database(join(dataDir, 'vtpm.sqlite'));
    const newest = sqlite.prepare('select max(name) from kysely_migration').pluck().get() as string;
    sqlite
      .prepare('insert into kysely_migration (name, timestamp) values (?, ?)')
      .run('9999_from_a_newer_version', new Date().toISOString());
    sqlite.close();
    const refusal = await serveRefusal(dataDir, []);
    assert.match(
      refusal,
      new RegExp(
        `the database has schema version 9999 \\(9999_from_a_newer_version\\), newer than this vtpm-manager knows ` +
          `\\(version ${Number.parseInt(newest, 10)}, ${newest}\\).*\\[schema_too_new\\]`,
      ),
    );
  });
});
