import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { NoValidHostError, StateConflictError } from '../errors.js';
import { migrateVtpm } from './migrate.js';
import { FakeHostAgent } from './testing/fake-host-agent.js';
import { alice, openTestControlPlane, type TestControlPlane } from './testing/control-plane-harness.js';
import { generations, newest, row, runningVtpm, stoppedVtpm } from './testing/fixtures.js';

let t: TestControlPlane;
let hostB: FakeHostAgent;
beforeEach(async () => {
  hostB = new FakeHostAgent('host-b');
  const tpm12Only = new FakeHostAgent('host-c', ['COMPUTE_SECURITY_TPM_1_2', 'COMPUTE_SECURITY_TPM_TIS']);
  t = await openTestControlPlane({ hosts: [hostB, tpm12Only] });
});
afterEach(() => t.close());

/** A vTPM migrating from host-a to host-b, whose guest wrote 'on a' before. */
async function migratingVtpm(): Promise<string> {
  const vm = await runningVtpm(t);
  await t.local.guestWrites(vm, Buffer.from('on a'));
  await migrateVtpm(t.cp, vm, 'host-b', alice);
  return vm;
}

describe('migrate', () => {
  it("prepares: migrating to the destination, whose swtpm runs the vault's newest generation", async () => {
    const vm = await runningVtpm(t);
    await t.local.guestWrites(vm, Buffer.from('on a'));
    const migration = await migrateVtpm(t.cp, vm, 'host-b', alice);
    assert.equal(migration.from, 'host-a');
    assert.equal(migration.to, 'host-b');
    assert.equal(migration.socket, hostB.devicePaths(vm).socket);
    const record = await row(t, vm);
    assert.equal(record.status, 'migrating');
    assert.equal(record.migrating_to, 'host-b');
    assert.equal(record.host, 'host-a');
    assert.ok(t.local.isRunning(vm), 'the source keeps serving');
    assert.ok(hostB.isRunning(vm));
    assert.deepEqual(hostB.working.get(vm)?.tpm, Buffer.from('on a'));
  });

  it('preparing again for the same destination is answered as prepared, and starts nothing more', async () => {
    const vm = await migratingVtpm();
    const again = await migrateVtpm(t.cp, vm, 'host-b', alice);
    assert.equal(again.status, 'migrating');
    assert.deepEqual(
      hostB.calls.filter((c) => c.startsWith('start')),
      [`start ${vm}`],
    );
  });

  it("when the destination's start fails: running on the source, no destination, no reports held", async () => {
    const vm = await runningVtpm(t);
    hostB.failNext('start');
    await assert.rejects(migrateVtpm(t.cp, vm, 'host-b', alice), /start failed/);
    const record = await row(t, vm);
    assert.equal(record.status, 'running');
    assert.equal(record.migrating_to, null);
    assert.equal(record.host, 'host-a');
    assert.equal(
      t.cp.migrations.hold({ vm, kind: 'tpm', data: Buffer.from('x'), final: false, instance: 'x', after: [] }),
      false,
    );
    assert.ok(t.local.isRunning(vm));
    await t.local.guestWrites(vm, Buffer.from('still on a'));
    assert.deepEqual((await generations(t, vm))[0], ['tpm', 2, 'sync']);
  });

  it('when the key manager cannot read the secret: nothing changes', async () => {
    const vm = await runningVtpm(t);
    const before = await row(t, vm);
    t.keys.failNext('readSecret');
    await assert.rejects(migrateVtpm(t.cp, vm, 'host-b', alice), /key manager unavailable/);
    assert.deepEqual(await row(t, vm), before);
    assert.deepEqual(hostB.calls, []);
  });

  it('refuses a stopped vTPM, its own host, an unknown host and a host that does not fit', async () => {
    const stopped = await stoppedVtpm(t);
    await assert.rejects(migrateVtpm(t.cp, stopped, 'host-b', alice), /only a running vTPM is live-migrated/);
    const vm = await runningVtpm(t);
    await assert.rejects(migrateVtpm(t.cp, vm, 'host-a', alice), /already runs on host-a/);
    await assert.rejects(migrateVtpm(t.cp, vm, 'host-z', alice), StateConflictError);
    await assert.rejects(migrateVtpm(t.cp, vm, 'host-c', alice), NoValidHostError);
    assert.equal((await row(t, vm)).status, 'running');
    assert.equal((await row(t, stopped)).status, 'stopped');
  });

  it("holds the destination's reports and commits the source's", async () => {
    const vm = await migratingVtpm();
    await hostB.guestWrites(vm, Buffer.from('on b'));
    assert.deepEqual(await generations(t, vm), [
      ['tpm', 2, 'sync'],
      ['tpm', 1, 'create'],
    ]);
    await t.local.guestWrites(vm, Buffer.from('on a again'));
    assert.deepEqual((await generations(t, vm))[0], ['tpm', 3, 'sync']);
  });

  it("the source's exit completes it: the vTPM runs on the destination with what it reported", async () => {
    const vm = await migratingVtpm();
    await hostB.guestWrites(vm, Buffer.from('on b'));
    await t.local.exits(vm);
    await t.settle();
    const record = await row(t, vm);
    assert.equal(record.status, 'running');
    assert.equal(record.host, 'host-b');
    assert.equal(record.migrating_to, null);
    assert.equal(record.socket, hostB.devicePaths(vm).socket);
    assert.deepEqual((await newest(t, vm)).data, Buffer.from('on b'));
    assert.deepEqual((await generations(t, vm))[0], ['tpm', 3, 'sync']);
    assert.deepEqual(t.cp.migrations.peek(vm), [], 'nothing is held any more');
    // The vTPM is heard from its new host only.
    await hostB.guestWrites(vm, Buffer.from('on b, later'));
    assert.deepEqual((await newest(t, vm)).data, Buffer.from('on b, later'));
    assert.ok(hostB.isRunning(vm));
  });

  it("the source's exit completes it when the destination's QEMU has the guest, even before it wrote", async () => {
    const vm = await migratingVtpm();
    hostB.connected.add(vm);
    await t.local.exits(vm);
    await t.settle();
    const record = await row(t, vm);
    assert.equal(record.status, 'running');
    assert.equal(record.host, 'host-b');
    assert.ok(hostB.isRunning(vm));
  });

  it("a guest shut down before any migration ran: the source's exit abandons it, and the vTPM is stopped", async () => {
    const vm = await migratingVtpm();
    await t.local.guestWrites(vm, Buffer.from('last on a'));
    await t.local.exits(vm);
    await t.settle();
    const record = await row(t, vm);
    assert.equal(record.status, 'stopped');
    assert.equal(record.host, 'host-a');
    assert.equal(record.migrating_to, null);
    assert.equal(hostB.isRunning(vm), false, "the destination's prepared copy is gone");
    assert.deepEqual((await newest(t, vm)).data, Buffer.from('last on a'));
  });

  it("the destination's exit abandons it: on the source, held reports dropped, its copy destroyed", async () => {
    const vm = await migratingVtpm();
    await hostB.guestWrites(vm, Buffer.from('on b'));
    await hostB.exits(vm);
    await t.settle();
    const record = await row(t, vm);
    assert.equal(record.status, 'running');
    assert.equal(record.host, 'host-a');
    assert.equal(record.migrating_to, null);
    assert.deepEqual((await newest(t, vm)).data, Buffer.from('on a'));
    assert.deepEqual(await generations(t, vm), [
      ['tpm', 2, 'sync'],
      ['tpm', 1, 'create'],
    ]);
    assert.ok(hostB.calls.includes(`destroy ${vm}`));
    assert.equal(hostB.working.has(vm), false);
    assert.ok(t.local.isRunning(vm));
    assert.ok(t.cp.vaultKeys.get(vm), 'the source still reports');
    await t.local.guestWrites(vm, Buffer.from('on a again'));
    assert.deepEqual((await generations(t, vm))[0], ['tpm', 3, 'sync']);
  });
});
