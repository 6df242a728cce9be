import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { NotFoundError, StateConflictError } from '../errors.js';
import { restoreGeneration } from './restore.js';
import { startVtpm } from './start.js';
import { alice, openTestControlPlane, type TestControlPlane } from './testing/control-plane-harness.js';
import { generations, newest, row, runningVtpm, stoppedVtpm, withTwoGenerations } from './testing/fixtures.js';

let t: TestControlPlane;
beforeEach(async () => {
  t = await openTestControlPlane();
});
afterEach(() => t.close());

describe('restore', () => {
  it('makes the old generation the newest, as a new generation; nothing is deleted', async () => {
    const { vm, manufactured } = await withTwoGenerations(t);
    const restored = await restoreGeneration(t.cp, vm, 1, alice);
    assert.equal(restored.generation, 3);
    assert.deepEqual(await generations(t, vm), [
      ['tpm', 3, 'restore'],
      ['tpm', 2, 'stop'],
      ['tpm', 1, 'create'],
    ]);
    assert.deepEqual((await newest(t, vm)).data, manufactured);
    await startVtpm(t.cp, vm, alice);
    assert.deepEqual(t.local.working.get(vm)?.tpm, manufactured);
  });

  it('refuses a running vTPM, and commits nothing', async () => {
    const vm = await runningVtpm(t);
    await assert.rejects(restoreGeneration(t.cp, vm, 1, alice), StateConflictError);
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);
    assert.equal((await row(t, vm)).status, 'running');
  });

  it('refuses a vTPM left deleting', async () => {
    const vm = await stoppedVtpm(t);
    await t.cp.store.vtpms.update(vm, { status: 'deleting' });
    await assert.rejects(restoreGeneration(t.cp, vm, 1, alice), /only a stopped vTPM can be restored/);
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);
  });

  it('of a generation that does not exist: not found, nothing committed', async () => {
    const { vm } = await withTwoGenerations(t);
    await assert.rejects(restoreGeneration(t.cp, vm, 7, alice), NotFoundError);
    assert.equal((await generations(t, vm)).length, 2);
  });

  it('when the key manager cannot read the secret: nothing committed', async () => {
    const { vm } = await withTwoGenerations(t);
    t.keys.failNext('readSecret');
    await assert.rejects(restoreGeneration(t.cp, vm, 1, alice), /key manager unavailable/);
    assert.equal((await generations(t, vm)).length, 2);
  });
});
