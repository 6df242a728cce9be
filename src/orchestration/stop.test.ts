import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { migrateVtpm } from './migrate.js';
import { stopVtpm } from './stop.js';
import type { FakeHostAgent } from './testing/fake-host-agent.js';
import { alice, type TestControlPlane } from './testing/control-plane-harness.js';
import { generations, row, runningVtpm, stoppedVtpm, openWithSecondHost } from './testing/fixtures.js';

let t: TestControlPlane;
let hostB: FakeHostAgent;
beforeEach(async () => {
  ({ t, hostB } = await openWithSecondHost());
});
afterEach(() => t.close());

describe('stop', () => {
  it('stops swtpm, commits its final state as stop and leaves the vTPM stopped without a socket', async () => {
    const vm = await runningVtpm(t);
    t.local.working.set(vm, { tpm: Buffer.from('final') });
    const stopped = await stopVtpm(t.cp, vm, alice);
    await t.settle();
    assert.deepEqual([stopped.status, stopped.unchanged], ['stopped', undefined]);
    const again = await stopVtpm(t.cp, vm, alice);
    assert.deepEqual([again.status, again.unchanged], ['stopped', true]);
    const record = await row(t, vm);
    assert.equal(record.status, 'stopped');
    assert.equal(record.socket, null);
    assert.equal(t.local.isRunning(vm), false);
    assert.deepEqual(await generations(t, vm), [
      ['tpm', 2, 'stop'],
      ['tpm', 1, 'create'],
    ]);
    assert.equal(t.cp.vaultKeys.get(vm), undefined);
  });

  it("when the agent's stop fails: the vTPM is running again, not stuck stopping", async () => {
    const vm = await runningVtpm(t);
    t.local.failNext('stop');
    await assert.rejects(stopVtpm(t.cp, vm, alice), /stop failed/);
    const record = await row(t, vm);
    assert.equal(record.status, 'running');
    assert.equal(record.socket, t.local.devicePaths(vm).socket);
    assert.ok(t.local.isRunning(vm));
    assert.ok(t.cp.vaultKeys.get(vm), 'its reports are still taken');
    await t.local.guestWrites(vm, Buffer.from('still running'));
    assert.deepEqual((await generations(t, vm))[0], ['tpm', 2, 'sync']);
  });

  it("with another host's scope: changes nothing and asks no host", async () => {
    const vm = await runningVtpm(t);
    const before = await row(t, vm);
    t.local.calls.length = 0;
    const view = await stopVtpm(t.cp, vm, alice, { host: 'host-b' });
    assert.equal(view.status, 'running');
    assert.deepEqual(await row(t, vm), before);
    assert.deepEqual(t.local.calls, []);
    assert.deepEqual(hostB.calls, []);
    assert.ok(t.local.isRunning(vm));
  });

  it('of a stopped vTPM: nothing to do', async () => {
    const vm = await stoppedVtpm(t);
    const before = await row(t, vm);
    assert.equal((await stopVtpm(t.cp, vm, alice)).status, 'stopped');
    assert.deepEqual(await row(t, vm), before);
    assert.deepEqual(t.local.calls, [`manufacture ${vm}`]);
  });

  it('of a migrating vTPM without a host scope: refused, the migration goes on', async () => {
    const vm = await runningVtpm(t);
    await migrateVtpm(t.cp, vm, 'host-b', alice);
    await assert.rejects(stopVtpm(t.cp, vm, alice), /is migrating from host-a to host-b/);
    assert.equal((await row(t, vm)).status, 'migrating');
    assert.ok(t.local.isRunning(vm));
    assert.ok(hostB.isRunning(vm));
  });

  it("from the migration's destination: its copy stops and the migration is abandoned", async () => {
    const vm = await runningVtpm(t);
    await migrateVtpm(t.cp, vm, 'host-b', alice);
    await stopVtpm(t.cp, vm, alice, { host: 'host-b' });
    await t.settle();
    const record = await row(t, vm);
    assert.equal(record.status, 'running');
    assert.equal(record.host, 'host-a');
    assert.equal(record.migrating_to, null);
    assert.equal(hostB.isRunning(vm), false);
    assert.ok(t.local.isRunning(vm));
  });
});
