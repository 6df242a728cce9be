import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { StateConflictError } from '../errors.js';
import { digestOf } from '../vault/state-vault.js';
import { migrateVtpm } from './migrate.js';
import { startVtpm } from './start.js';
import { ingestExit, ingestStateChange } from './state-ingest.js';
import { stopVtpm } from './stop.js';
import { alice, type TestControlPlane } from './testing/control-plane-harness.js';
import { generations, newest, openWithSecondHost, row, runningVtpm, stoppedVtpm } from './testing/fixtures.js';

let t: TestControlPlane;
beforeEach(async () => {
  ({ t } = await openWithSecondHost());
});
afterEach(() => t.close());

/** A report of `instance` (by default the launch host-a runs) that names no predecessor. */
const report = (vm: string, data: string, final = false, instance = instanceOn(vm)) => ({
  vm,
  kind: 'tpm' as const,
  data: Buffer.from(data),
  final,
  instance,
  after: [],
});
const instanceOn = (vm: string) => (t.local.isRunning(vm) ? t.local.instanceOf(vm) : 'not-running');
const exit = (vm: string, instance = instanceOn(vm)) => ({ vm, code: 0, signal: null, instance });

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

  it('refuses a report for a stopped vTPM from no launch of it, and commits nothing', async () => {
    const vm = await stoppedVtpm(t);
    await assert.rejects(ingestStateChange(t.cp, 'host-a', report(vm, 'stray')), StateConflictError);
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
    const destination = (await row(t, vm)).migrating_instance!;
    await ingestStateChange(t.cp, 'host-b', report(vm, 'on b', false, destination));
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);
    await assert.rejects(ingestStateChange(t.cp, 'host-c', report(vm, 'forged')), StateConflictError);
  });

  it('a destination report with no migration under way (the control plane restarted) is not taken', async () => {
    const vm = await runningVtpm(t);
    await migrateVtpm(t.cp, vm, 'host-b', alice);
    const destination = (await row(t, vm)).migrating_instance!;
    const cp = await t.restart();
    await assert.rejects(ingestStateChange(cp, 'host-b', report(vm, 'on b', false, destination)), StateConflictError);
    assert.deepEqual(cp.migrations.peek(vm), []);
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);
  });
});

describe('state ingest: nothing a host reports is answered before it is in the vault', () => {
  it('a running vTPM whose vault key is not in memory (not reconciled yet) has its report committed', async () => {
    const vm = await runningVtpm(t);
    const cp = await t.restart();
    assert.equal(cp.vaultKeys.get(vm), undefined);
    await ingestStateChange(cp, 'host-a', report(vm, 'after the restart'));
    assert.deepEqual((await generations(t, vm))[0], ['tpm', 2, 'sync']);
    assert.ok(cp.vaultKeys.get(vm), 'the key read for it is kept while it runs');
  });

  it('when that key cannot be read, the report fails (the host keeps it, tries again): nothing lost', async () => {
    const vm = await runningVtpm(t);
    const cp = await t.restart();
    t.keys.failNext('readSecret');
    await assert.rejects(ingestStateChange(cp, 'host-a', report(vm, 'kept by the host')), /key manager unavailable/);
    await ingestStateChange(cp, 'host-a', report(vm, 'kept by the host'));
    assert.deepEqual((await generations(t, vm))[0], ['tpm', 2, 'sync']);
  });

  it('a late exit of an earlier launch does not stop the launch that runs now', async () => {
    const vm = await runningVtpm(t);
    const earlier = t.local.instanceOf(vm);
    await stopVtpm(t.cp, vm, alice);
    await startVtpm(t.cp, vm, alice);
    await ingestExit(t.cp, 'host-a', exit(vm, earlier));
    const record = await row(t, vm);
    assert.equal(record.status, 'running');
    assert.equal(record.instance, t.local.instanceOf(vm));
    assert.ok(t.cp.vaultKeys.get(vm));
  });

  it("a report of an earlier launch is refused, and the new launch's are taken", async () => {
    const vm = await runningVtpm(t);
    const earlier = t.local.instanceOf(vm);
    await stopVtpm(t.cp, vm, alice);
    await startVtpm(t.cp, vm, alice);
    await assert.rejects(ingestStateChange(t.cp, 'host-a', report(vm, 'old', false, earlier)), StateConflictError);
    await t.local.guestWrites(vm, Buffer.from('new'));
    assert.deepEqual((await newest(t, vm)).data, Buffer.from('new'));
  });

  it('a replayed old report is refused: the vault never goes back to it', async () => {
    const vm = await runningVtpm(t);
    await t.local.guestWrites(vm, Buffer.from('first'));
    const first = t.local.reported.at(-1)!;
    await t.local.guestWrites(vm, Buffer.from('second'));
    await assert.rejects(t.local.send(first), StateConflictError);
    assert.deepEqual((await newest(t, vm)).data, Buffer.from('second'));
    assert.equal((await generations(t, vm)).length, 3);
  });

  it("a stale report's refusal names the vault's head, which its host may have sent and no longer names", async () => {
    const vm = await runningVtpm(t);
    await t.local.guestWrites(vm, Buffer.from('first'));
    const first = t.local.reported.at(-1)!;
    await t.local.guestWrites(vm, Buffer.from('second'));
    await assert.rejects(
      t.local.send(first),
      (error: unknown) => error instanceof StateConflictError && error.details.head === digestOf(Buffer.from('second')),
    );
  });

  it('a report sent again after its answer was lost is taken once', async () => {
    const vm = await runningVtpm(t);
    await t.local.guestWrites(vm, Buffer.from('first'));
    await t.local.send(t.local.reported.at(-1)!);
    assert.deepEqual(await generations(t, vm), [
      ['tpm', 2, 'sync'],
      ['tpm', 1, 'create'],
    ]);
  });
});
