/**
 * The local key manager with its master key sealed to the host's TPM (a swtpm
 * stands in for each host's TPM, reached through tpm2-tools): no plaintext
 * master key on disk, a real guest's TPM state carries on across restarts and a
 * key rotation, and a copy of the data
 * directory unlocks nothing on a host with another TPM, while the same copy
 * opens fine with the original TPM (so it is the TPM that decides).
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { socketAccepts } from '../../src/swtpm/tpm-socket.js';
import { buildInitramfs, findKernel, GUEST_NV_DATA, responseCode, type GuestReport } from './support/guest.js';
import { bootNvGuest, serveRefusal, ServiceUnderTest, temporaryDir, type VtpmJson } from './support/service.js';

const exec = promisify(execFile);
let workDir = '';
const hostTpms: ChildProcess[] = [];

/** A swtpm as a host's TPM: data and control sockets as the swtpm TCTI expects, started like firmware would. */
async function hostTpm(name: string): Promise<string> {
  const dir = join(workDir, name);
  await mkdir(dir);
  const socket = join(dir, 'tpm.sock');
  hostTpms.push(
    spawn(
      'swtpm',
      [
        'socket',
        '--tpm2',
        '--tpmstate',
        `dir=${dir}`,
        '--server',
        `type=unixio,path=${socket}`,
        '--ctrl',
        `type=unixio,path=${socket}.ctrl`,
        '--flags',
        'not-need-init',
      ],
      { stdio: 'ignore' },
    ),
  );
  while (!(await socketAccepts(`${socket}.ctrl`))) await delay(10);
  const tcti = `swtpm:path=${socket}`;
  await exec('tpm2_startup', ['-c'], { env: { ...process.env, TPM2TOOLS_TCTI: tcti } });
  return tcti;
}

let kernel = '';
let initramfs = '';

before(async () => {
  workDir = await temporaryDir('vtpm-sealed');
  kernel = await findKernel();
  initramfs = await buildInitramfs(workDir);
});

after(async () => {
  for (const tpm of hostTpms) tpm.kill();
  await rm(workDir, { recursive: true, force: true });
});

describe('the local key manager sealed to the host TPM', () => {
  it(
    'keeps no plaintext master key, works across restarts, ' +
      'and a copied data directory opens nothing on another TPM',
    async () => {
      const tpmA = await hostTpm('host-a');
      const dataDir = join(workDir, 'data');
      const sealed = ['--pool-size', '0', '--seal-to-tpm', '--host-tpm', tpmA];
      const vm = randomUUID();

      let service = await ServiceUnderTest.start(dataDir, sealed);
      let first: GuestReport;
      try {
        await service.json('create', '--vm', vm, '--version', '2.0');
        first = await bootNvGuest(service, vm, { kernel, initramfs });
        assert.equal(responseCode(first.responses['3-write']!), 0, 'the guest wrote its NV index');
      } finally {
        await service.stop();
      }
      const keyFiles = await readdir(join(dataDir, 'keys'));
      assert.deepEqual(keyFiles.sort(), ['master.tpm', 'secrets'], 'no plaintext master key, only the TPM-sealed one');

      // Restart: the master key is unsealed again and the vTPM's secret opens. Then a key rotation, and again.
      service = await ServiceUnderTest.start(dataDir, sealed);
      const certificate = await service.json<{ certificates: unknown[] }>('ek', vm);
      try {
        assert.equal((await service.json<VtpmJson>('start', vm)).status, 'running');
        await service.json('stop', vm);
        const rotated = await service.json<{ rewrapped: number }>('keys', 'rotate');
        assert.ok(rotated.rewrapped >= 2, 'the vTPM secret and the CA passwords are re-wrapped');
      } finally {
        await service.stop();
      }
      assert.deepEqual(
        (await readdir(join(dataDir, 'keys'))).sort(),
        ['master.tpm', 'secrets'],
        'the new key replaced the old, sealed too',
      );
      service = await ServiceUnderTest.start(dataDir, sealed);
      try {
        assert.deepEqual(await service.json('ek', vm), certificate);
        const second = await bootNvGuest(service, vm, { kernel, initramfs });
        assert.ok(
          second.responses['1-data']!.includes(GUEST_NV_DATA),
          'after rotation and restart the guest reads what it wrote',
        );
        assert.deepEqual(second.responses['7-ekpublic'], first.responses['7-ekpublic'], 'the same EK');
      } finally {
        await service.stop();
      }

      const copy = join(workDir, 'copied-data');
      await exec('cp', ['-a', dataDir, copy]);
      const tpmB = await hostTpm('host-b');
      assert.match(
        await serveRefusal(copy, ['--seal-to-tpm', '--host-tpm', tpmB]),
        /master key is sealed to another TPM than swtpm:path=.*host-b/,
      );
      assert.match(await serveRefusal(copy, []), /sealed to a TPM: start with --seal-to-tpm/);

      // The same copy with the TPM it was sealed to opens: the TPM is what decides.
      const original = await ServiceUnderTest.start(copy, sealed);
      try {
        assert.deepEqual(await original.json('ek', vm), certificate);
        assert.equal((await original.json<VtpmJson>('start', vm)).status, 'running');
        await original.json('stop', vm);
      } finally {
        await original.stop();
      }
    },
  );
});
