import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { StateConflictError } from '../errors.js';
import { adoptVtpm } from './adopt.js';
import { alice, openTestControlPlane, type TestControlPlane } from './testing/control-plane-harness.js';
import { generations, newest, row, stoppedVtpm } from './testing/fixtures.js';

let t: TestControlPlane;
beforeEach(async () => {
  t = await openTestControlPlane();
});
afterEach(() => t.close());

const adoption = (vm: string) => ({ vm, version: '2.0', source: 'libvirt:guest', state: Buffer.from('libvirt state') });

describe('adopt', () => {
  it("leaves a stopped vTPM whose first generation is the adopted TPM's state", async () => {
    const vm = randomUUID();
    const adopted = await adoptVtpm(t.cp, adoption(vm), alice);
    assert.equal(adopted.status, 'stopped');
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'adopt']]);
    assert.deepEqual((await newest(t, vm)).data, Buffer.from('libvirt state'));
    const claims = (await row(t, vm)).spec_claims as { adopted_from?: string };
    assert.equal(claims.adopted_from, 'libvirt:guest');
  });

  it("when the agent's adopt fails: no row, no generations, no secret", async () => {
    const vm = randomUUID();
    t.local.failNext('adopt');
    await assert.rejects(adoptVtpm(t.cp, adoption(vm), alice), /adopt failed/);
    assert.equal(await t.cp.store.vtpms.get(vm), undefined);
    assert.deepEqual(await t.cp.vault.history(vm), []);
    assert.equal(t.keys.made.length, 1, 'a secret was made');
    assert.deepEqual(await t.keys.held(), [], 'and erased');
    assert.deepEqual(await t.cp.store.secrets.listUses(), []);
  });

  it('when the key manager cannot read the new secret: no row, no secret', async () => {
    const vm = randomUUID();
    t.keys.failNext('readSecret');
    await assert.rejects(adoptVtpm(t.cp, adoption(vm), alice), /key manager unavailable/);
    assert.equal(await t.cp.store.vtpms.get(vm), undefined);
    assert.deepEqual(await t.keys.held(), []);
    assert.ok(!t.local.calls.includes(`adopt ${vm}`));
  });

  it('when the undo cannot reach the key manager: left deleting, the adopt failure reported', async () => {
    const vm = randomUUID();
    t.local.failNext('adopt');
    t.keys.failNext('deleteSecret');
    await assert.rejects(adoptVtpm(t.cp, adoption(vm), alice), /adopt failed/);
    assert.equal((await row(t, vm)).status, 'deleting');
  });

  it('refuses a VM that has a vTPM, and changes nothing', async () => {
    const vm = await stoppedVtpm(t);
    const before = await row(t, vm);
    await assert.rejects(adoptVtpm(t.cp, adoption(vm), alice), StateConflictError);
    assert.deepEqual(await row(t, vm), before);
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);
    assert.equal(t.keys.made.length, 1);
  });
});
