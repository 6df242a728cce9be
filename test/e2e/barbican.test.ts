/**
 * vTPM secrets in a real OpenStack Barbican, in the owner's project as Nova
 * keeps them (a TPM from the provisioning pool too); the service across a
 * restart; Barbican going away: running vTPMs keep running and syncing, new
 * operations that need a secret fail fast with "key manager unavailable", and
 * work again, without a restart, once it is back; and key rotation, which
 * stores every secret anew in Barbican while a guest's TPM state carries on.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { Barbican } from './support/barbican.js';
import {
  bootGuest,
  buildInitramfs,
  findKernel,
  GUEST_NV_DATA,
  responseCode,
  type GuestReport,
} from './support/guest.js';
import { ServiceUnderTest, temporaryDir, type StartedJson, type VtpmJson } from './support/service.js';

let workDir = '';
let barbican: Barbican;
let service: ServiceUnderTest;
let serveArgs: string[] = [];
let kernel = '';
let initramfs = '';
const tokens: Record<string, string> = {};

before(async () => {
  workDir = await temporaryDir('vtpm-barbican');
  barbican = await Barbican.create(workDir);
  serveArgs = ['--pool-size', '1', '--key-manager', 'barbican', '--barbican-url', barbican.url];
  service = await ServiceUnderTest.start(join(workDir, 'data'), serveArgs);
  for (const [name, project] of [['alice', 'p1']] as const) {
    tokens[name] = (
      await service.json<{ token: string }>('user', 'create', name, '--project', project, '--role', 'member')
    ).token;
  }
  kernel = await findKernel();
  initramfs = await buildInitramfs(workDir);
});

after(async () => {
  for (const vtpm of await service.json<VtpmJson[]>('list').catch(() => []))
    await service.cli('delete', '--force', '--yes', vtpm.vm);
  await service.stop();
  await barbican.stop();
  await rm(workDir, { recursive: true, force: true });
});

const as = (user: string, ...args: string[]) => service.jsonAs<VtpmJson>(tokens[user]!, ...args);

async function poolHolds(version: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  while ((await service.json<{ ready: Record<string, number> }>('pool')).ready[version] === 0) {
    assert.ok(Date.now() < deadline, `the pool made no TPM ${version} within 60 s`);
    await delay(200);
  }
}

async function boot(vm: string): Promise<GuestReport> {
  const started = await service.jsonAs<StartedJson>(tokens.alice!, 'start', vm);
  const report = await bootGuest({ kernel, initramfs, qemuArgs: started.qemu_args, commandSet: 'nv' });
  await service.waitForStatus(vm, 'stopped');
  return report;
}

describe('the Barbican key manager', () => {
  it("keeps each vTPM's secret in Barbican, in its owner's project, a pooled TPM's too", async () => {
    await poolHolds('2.0');
    const vm = randomUUID();
    await as('alice', 'create', '--vm', vm, '--version', '2.0');
    const ek = await service.json<{ certificates: Array<{ pem: string }> }>('ek', vm);
    assert.doesNotMatch(ek.certificates[0]!.pem, new RegExp(vm), 'the TPM came from the pool');
    assert.ok((await barbican.secretNames('p1')).includes(`vtpm-${vm}`), 'the secret is in project p1');
    assert.ok(!(await barbican.secretNames('p2')).includes(`vtpm-${vm}`), 'and not in another project');
    assert.equal((await as('alice', 'start', vm)).status, 'running');
    await as('alice', 'stop', vm);

    await service.stop();
    service = await ServiceUnderTest.start(join(workDir, 'data'), serveArgs);
    assert.equal(
      (await as('alice', 'start', vm)).status,
      'running',
      'the secret is fetched from Barbican again after a restart',
    );
    await as('alice', 'stop', vm);

    await as('alice', 'delete', '--yes', vm);
    assert.ok(!(await barbican.secretNames('p1')).includes(`vtpm-${vm}`), 'delete removes the secret from Barbican');
  });

  it(
    'with Barbican down, running vTPMs keep syncing, new work fails fast as "key manager unavailable", ' +
      'and works again when it is back',
    async () => {
      const vm = randomUUID();
      await as('alice', 'create', '--vm', vm, '--version', '2.0');
      await as('alice', 'start', vm);
      // A pooled TPM is at hand, so the refused create gets as far as reading its secret, and must roll back.
      await poolHolds('2.0');
      const refusedVm = randomUUID();
      await barbican.stop();
      try {
        // The running vTPM's state changes (written as swtpm writes it) and still reaches the vault.
        const before = (await service.json<unknown[]>('history', vm)).length;
        const stateDir = join(service.dataDir, 'tpm', vm);
        await writeFile(join(stateDir, 'TMP2-00.permall'), randomBytes(6172));
        await rename(join(stateDir, 'TMP2-00.permall'), join(stateDir, 'tpm2-00.permall'));
        const deadline = Date.now() + 15_000;
        while ((await service.json<unknown[]>('history', vm)).length === before && Date.now() < deadline)
          await delay(100);
        assert.equal(
          (await service.json<unknown[]>('history', vm)).length,
          before + 1,
          'the change was committed while Barbican was down',
        );
        assert.equal((await service.json<VtpmJson>('show', vm)).status, 'running');

        const refused = await service.cliAs(tokens.alice!, 'create', '--vm', refusedVm, '--version', '2.0');
        assert.equal(refused.code, 6, refused.stderr);
        assert.match(
          refused.stderr,
          /key manager unavailable: Barbican at http:\/\/127\.0\.0\.1:\d+ cannot be reached/,
        );
      } finally {
        await barbican.start();
      }
      const again = randomUUID();
      assert.equal(
        (await as('alice', 'create', '--vm', again, '--version', '2.0')).vm,
        again,
        'no restart needed once Barbican is back',
      );
      // The refused create could not delete its secret while Barbican
      // was down: it waits as `deleting`, and deleting it now finishes.
      assert.equal((await as('alice', 'show', refusedVm)).status, 'deleting');
      await as('alice', 'delete', '--yes', refusedVm);
      assert.ok(!(await service.json<VtpmJson[]>('list')).some((vtpm) => vtpm.vm === refusedVm));
      await as('alice', 'stop', vm);
    },
  );

  it(
    'rotates by storing every secret anew in Barbican and deleting the old ones; ' + "the guest's TPM state carries on",
    async () => {
      const vm = randomUUID();
      await as('alice', 'create', '--vm', vm, '--version', '2.0');
      const first = await boot(vm);
      assert.equal(responseCode(first.responses['3-write']!), 0, 'the guest wrote its NV index');
      const before = await barbican.secrets('p1');
      const oldRef = before.find((secret) => secret.name === `vtpm-${vm}`)!.secret_ref;

      const rotated = await service.json<{ kind: string; rewrapped: number }>('keys', 'rotate');
      assert.equal(rotated.kind, 'barbican');
      const vtpms = (await service.json<VtpmJson[]>('list')).length;
      assert.ok(
        rotated.rewrapped >= vtpms + 2,
        `every vTPM's secret and the CA's two passwords are stored anew (${rotated.rewrapped})`,
      );
      const after = await barbican.secrets('p1');
      const aliceVtpms = (await service.jsonAs<VtpmJson[]>(tokens.alice!, 'list')).map((vtpm) => `vtpm-${vtpm.vm}`);
      assert.deepEqual(
        after.map((secret) => secret.name).sort(),
        aliceVtpms.sort(),
        'one secret per vTPM of p1, in p1',
      );
      const newRef = after.find((secret) => secret.name === `vtpm-${vm}`)!.secret_ref;
      assert.notEqual(newRef, oldRef);
      // Barbican's references carry its configured host_href, not the address it was reached at.
      const oldSecret = `${barbican.url}/v1/secrets/${oldRef.split('/').pop()}`;
      assert.equal(
        (await fetch(oldSecret, { headers: { 'x-project-id': 'p1' } })).status,
        404,
        'the old secret is deleted',
      );

      await service.stop();
      service = await ServiceUnderTest.start(join(workDir, 'data'), serveArgs);
      const second = await boot(vm);
      assert.equal(responseCode(second.responses['1-data']!), 0);
      assert.ok(
        second.responses['1-data']!.includes(GUEST_NV_DATA),
        'after rotation and a restart the guest reads what it wrote',
      );
      assert.deepEqual(second.responses['7-ekpublic'], first.responses['7-ekpublic'], 'the same EK');
    },
  );
});
