import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { migrateVtpm } from './migrate.js';
import { reconcile } from './reconcile.js';
import { startVtpm } from './start.js';
import type { FakeHostAgent } from './testing/fake-host-agent.js';
import { alice, type TestControlPlane } from './testing/control-plane-harness.js';
import { generations, newest, row, runningVtpm, stoppedVtpm, openWithSecondHost } from './testing/fixtures.js';

let t: TestControlPlane;
let hostB: FakeHostAgent;
beforeEach(async () => {
  ({ t, hostB } = await openWithSecondHost());
});
afterEach(() => t.close());

/** A stopped vTPM whose row a crash left `status`. */
async function interrupted(status: 'creating' | 'deleting'): Promise<{ vm: string; ref: string }> {
  const vm = await stoppedVtpm(t);
  await t.cp.store.vtpms.update(vm, { status });
  return { vm, ref: (await row(t, vm)).secret_ref };
}

describe('reconcile', () => {
  it('erases vTPMs left creating or deleting: secret, generations and row', async () => {
    const creating = await interrupted('creating');
    const deleting = await interrupted('deleting');
    const kept = await stoppedVtpm(t);
    await reconcile(await t.restart());
    for (const { vm, ref } of [creating, deleting]) {
      assert.equal(await t.cp.store.vtpms.get(vm), undefined);
      assert.equal(await t.keys.holds(ref), false);
      assert.deepEqual(await t.cp.vault.history(vm), []);
    }
    assert.equal((await row(t, kept)).status, 'stopped');
    assert.deepEqual(await generations(t, kept), [['tpm', 1, 'create']]);
  });

  it('when the key manager cannot erase one: it stays deleting, the rest goes on, nothing is thrown', async () => {
    const first = await interrupted('creating');
    const second = await interrupted('creating');
    t.keys.failNext('deleteSecret');
    await reconcile(await t.restart());
    const [failed, erased] = (await t.cp.store.vtpms.get(first.vm)) ? [first, second] : [second, first];
    assert.equal((await row(t, failed.vm)).status, 'deleting');
    assert.ok(await t.keys.holds(failed.ref));
    assert.deepEqual(await generations(t, failed.vm), [['tpm', 1, 'create']]);
    assert.equal(await t.cp.store.vtpms.get(erased.vm), undefined);

    await reconcile(await t.restart());
    assert.equal(await t.cp.store.vtpms.get(failed.vm), undefined);
    assert.equal(await t.keys.holds(failed.ref), false);
  });

  it('a running vTPM whose guest exited meanwhile: stopped, and the state it left committed as stop', async () => {
    const vm = await runningVtpm(t);
    await t.local.guestWrites(vm, Buffer.from('reported'));
    await reconcile(
      await t.restart(async () => {
        t.local.working.set(vm, { tpm: Buffer.from('left while the control plane was down') });
        await t.local.exits(vm);
      }),
    );
    const record = await row(t, vm);
    assert.equal(record.status, 'stopped');
    assert.equal(record.socket, null);
    assert.deepEqual(await generations(t, vm), [
      ['tpm', 3, 'stop'],
      ['tpm', 2, 'sync'],
      ['tpm', 1, 'create'],
    ]);
    assert.deepEqual((await newest(t, vm)).data, Buffer.from('left while the control plane was down'));
    assert.equal(t.cp.vaultKeys.get(vm), undefined);
  });

  it('the key manager away while the state a guest left is taken: stopping, no start, taken by a retry', async () => {
    const vm = await runningVtpm(t);
    t.keys.failNext('readSecret', 2);
    const cp = await t.restart(async () => {
      t.local.working.set(vm, { tpm: Buffer.from('left while the control plane was down') });
      await t.local.exits(vm);
    });
    await reconcile(cp);
    assert.equal((await row(t, vm)).status, 'stopping');
    await assert.rejects(startVtpm(cp, vm, alice), { code: 'state_conflict' });
    assert.equal(t.local.working.get(vm)?.tpm?.toString(), 'left while the control plane was down');
    for (let waited = 0; (await row(t, vm)).status === 'stopping' && waited < 5000; waited += 20) await delay(20);
    assert.equal((await row(t, vm)).status, 'stopped');
    assert.deepEqual((await generations(t, vm))[0], ['tpm', 2, 'stop']);
    assert.deepEqual((await newest(t, vm)).data, Buffer.from('left while the control plane was down'));
  });

  it("a running vTPM whose changes can't be reported at start-up: reconcile goes on, it stays running", async () => {
    const vm = await runningVtpm(t);
    const other = await stoppedVtpm(t);
    await t.cp.store.vtpms.update(other, { status: 'running' });
    t.local.failNext('resync');
    await reconcile(await t.restart());
    assert.equal((await row(t, vm)).status, 'running');
    assert.equal((await row(t, other)).status, 'stopped');
  });

  it("a running vTPM whose working copy is the head: stopped, no new generation, the head the run's last", async () => {
    const vm = await runningVtpm(t);
    await t.local.guestWrites(vm, Buffer.from('reported'));
    await reconcile(await t.restart(() => t.local.exits(vm)));
    assert.equal((await row(t, vm)).status, 'stopped');
    assert.deepEqual((await generations(t, vm))[0], ['tpm', 2, 'stop']);
  });

  it('a starting vTPM that does not run: stopped, its older working copy not committed', async () => {
    const vm = await stoppedVtpm(t);
    t.local.working.set(vm, { tpm: Buffer.from('an older copy') });
    await t.cp.store.vtpms.update(vm, { status: 'starting' });
    await reconcile(await t.restart());
    assert.equal((await row(t, vm)).status, 'stopped');
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);
  });

  it('a vTPM that still runs gets its vault key back, and what changed meanwhile is committed', async () => {
    const vm = await runningVtpm(t);
    const cp = await t.restart(() => t.local.guestWrites(vm, Buffer.from('written while down')));
    assert.equal(cp.vaultKeys.get(vm), undefined);
    await reconcile(cp);
    const record = await row(t, vm);
    assert.equal(record.status, 'running');
    assert.ok(cp.vaultKeys.get(vm));
    assert.ok(t.local.calls.includes(`resync ${vm}`));
    assert.deepEqual(await generations(t, vm), [
      ['tpm', 2, 'sync'],
      ['tpm', 1, 'create'],
    ]);
    assert.deepEqual((await newest(t, vm)).data, Buffer.from('written while down'));
    await t.local.guestWrites(vm, Buffer.from('written after'));
    assert.deepEqual((await generations(t, vm))[0], ['tpm', 3, 'sync']);
  });

  it('a stopped vTPM that a host runs is marked running, with its socket', async () => {
    const vm = await runningVtpm(t);
    await t.cp.store.vtpms.update(vm, { status: 'stopped', socket: null });
    await reconcile(await t.restart());
    const record = await row(t, vm);
    assert.equal(record.status, 'running');
    assert.equal(record.socket, t.local.devicePaths(vm).socket);
  });

  it("a host that does not say what it runs: its vTPMs keep their status, and reconcile doesn't throw", async () => {
    const vm = await runningVtpm(t);
    const before = await row(t, vm);
    t.local.failNext('running');
    await reconcile(await t.restart(() => t.local.exits(vm)));
    assert.deepEqual(await row(t, vm), before);
    assert.ok(!t.local.calls.includes(`workingState ${vm}`));
  });

  it('a migration whose two swtpms still run goes on: the destination is still held to', async () => {
    const vm = await runningVtpm(t);
    await migrateVtpm(t.cp, vm, 'host-b', alice);
    await reconcile(await t.restart());
    assert.equal((await row(t, vm)).status, 'migrating');
    await hostB.guestWrites(vm, Buffer.from('on b'));
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);
    await t.local.exits(vm);
    await t.settle();
    const record = await row(t, vm);
    assert.equal(record.host, 'host-b');
    assert.deepEqual((await newest(t, vm)).data, Buffer.from('on b'));
  });

  it('a migration whose source exited meanwhile is completed', async () => {
    const vm = await runningVtpm(t);
    await migrateVtpm(t.cp, vm, 'host-b', alice);
    await reconcile(await t.restart(() => t.local.exits(vm)));
    const record = await row(t, vm);
    assert.equal(record.status, 'running');
    assert.equal(record.host, 'host-b');
    assert.equal(record.migrating_to, null);
    assert.ok(t.cp.vaultKeys.get(vm));
  });

  it("vTPMs recorded on a host neither connected nor registered are taken as this host's", async () => {
    // As after a backup restored onto another machine (its host name is nowhere now), or the machine renamed.
    const restored = await runningVtpm(t);
    const renamed = await runningVtpm(t);
    const stopped = await stoppedVtpm(t);
    const onRegistered = await stoppedVtpm(t);
    for (const vm of [restored, renamed, stopped]) await t.cp.store.vtpms.update(vm, { host: 'old-name' });
    await t.cp.store.hosts.registerRemote('host-c', 'https://host-c.example:7391', 'ref-c');
    await t.cp.store.vtpms.update(onRegistered, { host: 'host-c', status: 'running' });
    await reconcile(await t.restart(() => t.local.exits(restored)));
    const state = async (vm: string) => {
      const record = await row(t, vm);
      return [record.status, record.host];
    };
    assert.deepEqual(await state(restored), ['stopped', 'host-a']);
    assert.deepEqual(await state(renamed), ['running', 'host-a']);
    assert.deepEqual(await state(stopped), ['stopped', 'host-a']);
    // A registered host that does not answer may come back: what it runs is unknown, nothing changes.
    assert.deepEqual(await state(onRegistered), ['running', 'host-c']);
    await startVtpm(t.cp, restored, alice);
    assert.deepEqual(await state(restored), ['running', 'host-a']);
  });

  it("a migration whose destination exited meanwhile is abandoned, the destination's copy destroyed", async () => {
    const vm = await runningVtpm(t);
    await migrateVtpm(t.cp, vm, 'host-b', alice);
    await reconcile(await t.restart(() => hostB.exits(vm)));
    const record = await row(t, vm);
    assert.equal(record.status, 'running');
    assert.equal(record.host, 'host-a');
    assert.equal(record.migrating_to, null);
    assert.equal(hostB.working.has(vm), false);
  });
});

describe('reconcile: what a guest left while the control plane was down', () => {
  it('a working copy that is not a whole state is not taken: the vTPM starts from the vault', async () => {
    const vm = await runningVtpm(t);
    await t.restart(async () => {
      await t.local.guestWrites(vm, Buffer.from('damaged: half a file'));
      await t.local.exits(vm);
    });
    await reconcile(t.cp);
    assert.equal((await row(t, vm)).status, 'stopped');
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);
  });
});
