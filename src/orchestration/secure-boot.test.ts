import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { StateConflictError } from '../errors.js';
import { VtpmRepository } from '../store/repositories/vtpms.js';
import { setSecureBoot } from './secure-boot.js';
import { startVtpm } from './start.js';
import { stopVtpm } from './stop.js';
import { alice, openTestControlPlane, type TestControlPlane } from './testing/control-plane-harness.js';
import { generations, newest, row, runningVtpm, stoppedVtpm } from './testing/fixtures.js';

let t: TestControlPlane;
beforeEach(async () => {
  t = await openTestControlPlane();
});
afterEach(() => t.close());

/** A stopped UEFI vTPM whose guest wrote its variable store. */
async function uefiVtpmWithEnrolledKeys(): Promise<string> {
  const vm = await stoppedVtpm(t, { uefi: true });
  await startVtpm(t.cp, vm, alice);
  await t.local.guestWrites(vm, Buffer.from('enrolled keys'), 'nvram');
  await stopVtpm(t.cp, vm, alice);
  await t.settle();
  return vm;
}

describe('secure boot', () => {
  it("turned on: the variable store's generations give way to a fresh default, the TPM's stay", async () => {
    const vm = await uefiVtpmWithEnrolledKeys();
    const view = await setSecureBoot(t.cp, vm, true, alice);
    assert.equal(view.secure_boot, true);
    assert.equal((await row(t, vm)).secure_boot, true);
    assert.deepEqual(await generations(t, vm), [
      ['nvram', 1, 'create'],
      ['tpm', 1, 'create'],
    ]);
    const fresh = await t.local.defaultVariableStore(true);
    assert.deepEqual((await newest(t, vm, 'nvram')).data, fresh);
    await startVtpm(t.cp, vm, alice);
    assert.deepEqual(t.local.working.get(vm)?.nvram, fresh);
  });

  it('a failure before the setting is stored changes nothing: the old variable store and setting stay', async () => {
    const vm = await uefiVtpmWithEnrolledKeys();
    const before = await generations(t, vm);
    const update = VtpmRepository.prototype.update;
    VtpmRepository.prototype.update = async () => {
      throw new Error('the database went away (injected)');
    };
    try {
      await assert.rejects(setSecureBoot(t.cp, vm, true, alice), /injected/);
    } finally {
      VtpmRepository.prototype.update = update;
    }
    assert.equal((await row(t, vm)).secure_boot, false);
    assert.deepEqual(await generations(t, vm), before);
    assert.deepEqual((await newest(t, vm, 'nvram')).data, Buffer.from('enrolled keys'));
  });

  it('refuses a running vTPM, and changes nothing', async () => {
    const vm = await runningVtpm(t, { uefi: true });
    const before = await row(t, vm);
    await assert.rejects(setSecureBoot(t.cp, vm, true, alice), /change secure boot while it is stopped/);
    assert.deepEqual(await row(t, vm), before);
    assert.deepEqual(await generations(t, vm), [
      ['nvram', 1, 'create'],
      ['tpm', 1, 'create'],
    ]);
  });

  it('refuses a BIOS guest', async () => {
    const vm = await stoppedVtpm(t);
    await assert.rejects(setSecureBoot(t.cp, vm, true, alice), StateConflictError);
    assert.equal((await row(t, vm)).secure_boot, false);
  });

  it('as it already is: nothing changes', async () => {
    const vm = await stoppedVtpm(t, { uefi: true });
    const history = await t.cp.vault.history(vm);
    await setSecureBoot(t.cp, vm, false, alice);
    assert.deepEqual(await t.cp.vault.history(vm), history);
  });

  it('when the key manager cannot read the secret: the setting and the variable store stay', async () => {
    const vm = await stoppedVtpm(t, { uefi: true });
    const history = await t.cp.vault.history(vm);
    t.keys.failNext('readSecret');
    await assert.rejects(setSecureBoot(t.cp, vm, true, alice), /key manager unavailable/);
    assert.equal((await row(t, vm)).secure_boot, false);
    assert.deepEqual(await t.cp.vault.history(vm), history);
  });
});
