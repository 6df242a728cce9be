import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { NotFoundError, StateConflictError } from '../errors.js';
import { deleteVtpm } from './delete.js';
import { migrateVtpm } from './migrate.js';
import type { FakeHostAgent } from './testing/fake-host-agent.js';
import { alice, type TestControlPlane } from './testing/control-plane-harness.js';
import { generations, row, runningVtpm, stoppedVtpm, openWithSecondHost } from './testing/fixtures.js';

let t: TestControlPlane;
let hostB: FakeHostAgent;
beforeEach(async () => {
  ({ t, hostB } = await openWithSecondHost());
});
afterEach(() => t.close());

async function assertErased(vm: string, ref: string) {
  assert.equal(await t.cp.store.vtpms.get(vm), undefined);
  assert.equal(await t.keys.holds(ref), false);
  assert.deepEqual(await t.cp.vault.history(vm), []);
  assert.equal(t.local.working.has(vm), false);
  assert.deepEqual(await t.cp.store.secrets.listUses(), []);
}

describe('delete', () => {
  it('erases the secret first, then the host copy, the generations and the row', async () => {
    const vm = await stoppedVtpm(t);
    const { secret_ref: ref } = await row(t, vm);
    const order: string[] = [];
    const deleteSecret = t.keys.deleteSecret.bind(t.keys);
    t.keys.deleteSecret = async (r) => {
      order.push(`secret ${(await t.cp.vault.history(vm)).length} generations left`);
      return deleteSecret(r);
    };
    t.local.working.set(vm, { tpm: Buffer.from('copy on host') });
    const destroy = t.local.destroy.bind(t.local);
    t.local.destroy = async (v) => {
      order.push(`destroy, secret held: ${await t.keys.holds(ref)}`);
      return destroy(v);
    };
    await deleteVtpm(t.cp, vm, { force: false }, alice);
    assert.deepEqual(order, ['secret 1 generations left', 'destroy, secret held: false']);
    await assertErased(vm, ref);
  });

  it('when the key manager cannot delete the secret: left deleting; a second delete finishes it', async () => {
    const vm = await stoppedVtpm(t);
    const { secret_ref: ref } = await row(t, vm);
    t.keys.failNext('deleteSecret');
    await assert.rejects(deleteVtpm(t.cp, vm, { force: false }, alice), /key manager unavailable/);
    assert.equal((await row(t, vm)).status, 'deleting');
    assert.ok(await t.keys.holds(ref));
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);

    await deleteVtpm(t.cp, vm, { force: false }, alice);
    await assertErased(vm, ref);
  });

  it('refuses a running vTPM without force, and changes nothing', async () => {
    const vm = await runningVtpm(t);
    const before = await row(t, vm);
    await assert.rejects(deleteVtpm(t.cp, vm, { force: false }, alice), StateConflictError);
    assert.deepEqual(await row(t, vm), before);
    assert.ok(t.local.isRunning(vm));
    assert.ok(await t.keys.holds(before.secret_ref));
    assert.ok(!t.local.calls.includes(`stop ${vm}`));
  });

  it('with force, stops a running vTPM and erases it', async () => {
    const vm = await runningVtpm(t);
    const { secret_ref: ref } = await row(t, vm);
    await deleteVtpm(t.cp, vm, { force: true }, alice);
    await t.settle();
    assert.equal(t.local.isRunning(vm), false);
    assert.ok(t.local.calls.includes(`stop ${vm}`));
    await assertErased(vm, ref);
    assert.equal(t.cp.vaultKeys.get(vm), undefined);
  });

  it('when stopping the running vTPM fails: nothing is erased', async () => {
    const vm = await runningVtpm(t);
    const { secret_ref: ref } = await row(t, vm);
    t.local.failNext('stop');
    await assert.rejects(deleteVtpm(t.cp, vm, { force: true }, alice), /stop failed/);
    assert.equal((await row(t, vm)).status, 'running');
    assert.ok(await t.keys.holds(ref));
    assert.ok(t.local.isRunning(vm));
  });

  it('with force, of a migrating vTPM: both swtpms stop and nothing of it is left', async () => {
    const vm = await runningVtpm(t);
    const { secret_ref: ref } = await row(t, vm);
    await t.local.guestWrites(vm, Buffer.from('on a'));
    await migrateVtpm(t.cp, vm, 'host-b', alice);
    await hostB.guestWrites(vm, Buffer.from('on b'));
    await deleteVtpm(t.cp, vm, { force: true }, alice);
    await t.settle();
    assert.equal(t.local.isRunning(vm), false);
    assert.equal(hostB.isRunning(vm), false);
    assert.equal(hostB.working.has(vm), false);
    await assertErased(vm, ref);
    assert.equal(t.cp.vaultKeys.get(vm), undefined);
  });

  it('of a vTPM left deleting on a host no longer connected: finished without asking that host', async () => {
    const vm = await stoppedVtpm(t);
    const { secret_ref: ref } = await row(t, vm);
    await t.cp.store.vtpms.update(vm, { status: 'deleting', host: 'host-gone' });
    await deleteVtpm(t.cp, vm, { force: false }, alice);
    assert.equal(await t.cp.store.vtpms.get(vm), undefined);
    assert.equal(await t.keys.holds(ref), false);
    assert.deepEqual(await t.cp.vault.history(vm), []);
  });

  it('of a vTPM that does not exist: not found', async () => {
    await assert.rejects(
      deleteVtpm(t.cp, '6f1c2a0e-9b7d-4c3e-8f21-0a1b2c3d4e5f', { force: true }, alice),
      NotFoundError,
    );
  });
});
