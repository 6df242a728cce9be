/**
 * vtpm-manager with an HSM through PKCS#11 (a real SoftHSM2 token): a real
 * guest writes to its vTPM, the key-encryption key is rotated inside the
 * token, the service restarts, and the guest boots again to the same state.
 * No key of the service's own lies in the data directory, and a copy of it
 * opens nothing with another token.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { buildInitramfs, findKernel, GUEST_NV_DATA, responseCode, type GuestReport } from './support/guest.js';
import { bootNvGuest, serveRefusal, ServiceUnderTest, temporaryDir, type VtpmJson } from './support/service.js';
import { softHsm, type SoftHsm } from './support/softhsm.js';

const exec = promisify(execFile);
let workDir = '';
let hsm: SoftHsm;
let kernel = '';
let initramfs = '';
let serveArgs: string[] = [];
const pkcs11Args = (token: string) => [
  '--key-manager',
  'pkcs11',
  '--pkcs11-module',
  hsm.module,
  '--pkcs11-token',
  token,
  '--pkcs11-pin-file',
  hsm.pinFile,
];

before(async () => {
  workDir = await temporaryDir('vtpm-pkcs11');
  hsm = await softHsm(workDir, 'vtpm-e2e');
  // The service this test starts inherits it, as a service unit's Environment= would give it.
  process.env.SOFTHSM2_CONF = hsm.conf;
  serveArgs = ['--pool-size', '0', ...pkcs11Args('vtpm-e2e')];
  kernel = await findKernel();
  initramfs = await buildInitramfs(workDir);
});

after(() => rm(workDir, { recursive: true, force: true }));

describe('the PKCS#11 key manager (SoftHSM2)', () => {
  it(
    'create, boot, rotate, restart, boot again with the same state; ' +
      'a copied data directory opens nothing with another token',
    async () => {
      const dataDir = join(workDir, 'data');
      const vm = randomUUID();
      let service = await ServiceUnderTest.start(dataDir, serveArgs);
      let first: GuestReport;
      try {
        await service.json('create', '--vm', vm, '--version', '2.0');
        first = await bootNvGuest(service, vm, { kernel, initramfs });
        assert.equal(responseCode(first.responses['3-write']!), 0, 'the guest wrote its NV index');
        const rotated = await service.json<{ kind: string; rewrapped: number }>('keys', 'rotate');
        assert.equal(rotated.kind, 'pkcs11');
        assert.ok(rotated.rewrapped >= 2, 'the vTPM secret and the CA passwords are re-wrapped');
      } finally {
        await service.stop();
      }
      assert.deepEqual(await readdir(join(dataDir, 'keys')), ['pkcs11'], 'no master key in the data directory');

      service = await ServiceUnderTest.start(dataDir, serveArgs);
      try {
        const second = await bootNvGuest(service, vm, { kernel, initramfs });
        assert.equal(responseCode(second.responses['1-data']!), 0);
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
      await hsm.addToken('elsewhere');
      assert.match(
        await serveRefusal(copy, pkcs11Args('elsewhere')),
        /current key-encryption key .* is not in the token/,
      );
      assert.match(
        await serveRefusal(copy, [
          '--key-manager',
          'pkcs11',
          '--pkcs11-module',
          hsm.module,
          '--pkcs11-token',
          'vtpm-e2e',
        ]),
        /--pkcs11-pin-file: expected the token's user PIN in a file \(or in VTPM_PKCS11_PIN\)/,
      );

      service = await ServiceUnderTest.start(dataDir, serveArgs);
      try {
        await service.json('delete', '--yes', vm);
        assert.deepEqual(await service.json<VtpmJson[]>('list'), []);
      } finally {
        await service.stop();
      }
    },
  );
});
