import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { StateConflictError } from '../errors.js';
import { migrateVtpm } from './migrate.js';
import { ingestExit, ingestStateChange } from './state-ingest.js';
import { alice, type TestControlPlane } from './testing/control-plane-harness.js';
import { generations, row, runningVtpm, stoppedVtpm, openWithSecondHost } from './testing/fixtures.js';

let t: TestControlPlane;
beforeEach(async () => {
  ({ t } = await openWithSecondHost());
});
afterEach(() => t.close());

const report = (vm: string, data: string, final = false) => ({
  vm,
  kind: 'tpm' as const,
  data: Buffer.from(data),
  final,
});
const exit = (vm: string) => ({ vm, code: 0, signal: null });

describe('state ingest', () => {
  it('commits a report from the host the vTPM runs on', async () => {
    const vm = await runningVtpm(t);
    await ingestStateChange(t.cp, 'host-a', report(vm, 'new'));
    await ingestStateChange(t.cp, 'host-a', report(vm, 'new'));
    await ingestStateChange(t.cp, 'host-a', report(vm, 'last', true));
    assert.deepEqual(await generations(t, vm), [
      ['tpm', 3, 'stop'],
      ['tpm', 2, 'sync'],
      ['tpm', 1, 'create'],
    ]);
  });

  it('refuses a report from a host the vTPM does not run on, and commits nothing', async () => {
    const vm = await runningVtpm(t);
    await assert.rejects(ingestStateChange(t.cp, 'host-b', report(vm, 'forged')), StateConflictError);
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);
  });

  it('does not commit a report for a vTPM whose vault key is not held (it is not running)', async () => {
    const vm = await stoppedVtpm(t);
    await ingestStateChange(t.cp, 'host-a', report(vm, 'stray'));
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);
  });

  it('an exit from another host changes nothing', async () => {
    const vm = await runningVtpm(t);
    const before = await row(t, vm);
    await ingestExit(t.cp, 'host-b', exit(vm));
    assert.deepEqual(await row(t, vm), before);
    assert.ok(t.cp.vaultKeys.get(vm));
    await t.local.guestWrites(vm, Buffer.from('still heard'));
    assert.deepEqual((await generations(t, vm))[0], ['tpm', 2, 'sync']);
  });

  it('an exit from its host: stopped, no socket, its vault key dropped', async () => {
    const vm = await runningVtpm(t);
    await ingestExit(t.cp, 'host-a', exit(vm));
    const record = await row(t, vm);
    assert.equal(record.status, 'stopped');
    assert.equal(record.socket, null);
    assert.equal(t.cp.vaultKeys.get(vm), undefined);
  });

  it('an exit of a VM with no vTPM is ignored', async () => {
    await ingestExit(t.cp, 'host-a', exit('6f1c2a0e-9b7d-4c3e-8f21-0a1b2c3d4e5f'));
  });

  it("during a migration: a third host's exit settles nothing, the destination's reports are held", async () => {
    const vm = await runningVtpm(t);
    await migrateVtpm(t.cp, vm, 'host-b', alice);
    await ingestExit(t.cp, 'host-c', exit(vm));
    assert.equal((await row(t, vm)).status, 'migrating');
    await ingestStateChange(t.cp, 'host-b', report(vm, 'on b'));
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);
    await assert.rejects(ingestStateChange(t.cp, 'host-c', report(vm, 'forged')), StateConflictError);
  });

  it('a destination report with no migration under way (the control plane restarted) is not taken', async () => {
    const vm = await runningVtpm(t);
    await migrateVtpm(t.cp, vm, 'host-b', alice);
    const cp = await t.restart();
    await ingestStateChange(cp, 'host-b', report(vm, 'on b'));
    assert.deepEqual(cp.migrations.end(vm), []);
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);
  });
});
