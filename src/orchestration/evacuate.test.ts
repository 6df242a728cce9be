import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import type { Principal } from '../auth/policy.js';
import { InvalidArgumentError, NotFoundError, StateConflictError } from '../errors.js';
import { createVtpm } from './create.js';
import { evacuateHost } from './evacuate.js';
import { stopWhatHostNoLongerOwns } from './fence.js';
import { migrateVtpm } from './migrate.js';
import { startVtpm } from './start.js';
import { ingestStateChange } from './state-ingest.js';
import { FakeHostAgent } from './testing/fake-host-agent.js';
import { alice, openTestControlPlane, type TestControlPlane } from './testing/control-plane-harness.js';
import { newest, row, runningVtpm } from './testing/fixtures.js';

const HOST_DOWN_AFTER_MS = 200;
const admin: Principal = { name: 'root', project: 'ops', roles: ['admin'] };

let t: TestControlPlane;
let hostB: FakeHostAgent;
let hostC: FakeHostAgent;
beforeEach(async () => {
  hostB = new FakeHostAgent('host-b');
  hostC = new FakeHostAgent('host-c');
  t = await openTestControlPlane({ hosts: [hostB, hostC], hostDownAfterMs: HOST_DOWN_AFTER_MS });
});
afterEach(() => t.close());

/** host-b's agent falls silent, and the control plane sees it down. */
async function loseHostB(): Promise<void> {
  hostB.lost = true;
  while ((await t.cp.fleet.host('host-b'))?.state !== 'down') await delay(HOST_DOWN_AFTER_MS / 4);
}

describe('evacuate', () => {
  it('moves a running vTPM off a down host, stopped elsewhere at the vault newest state; fences the old', async () => {
    const vm = await runningVtpm(t, { host: 'host-b' });
    await hostB.guestWrites(vm, Buffer.from('acknowledged on b'));
    const staleInstance = hostB.instanceOf(vm);
    await loseHostB();

    const evacuation = await evacuateHost(t.cp, 'host-b', {}, alice);
    assert.equal(evacuation.vtpms.length, 1);
    const [moved] = evacuation.vtpms;
    assert.equal(moved!.result, 'moved');
    assert.ok(moved!.to === 'host-a' || moved!.to === 'host-c', `placed on a live host, not ${moved!.to}`);
    assert.equal(moved!.status, 'stopped');
    assert.equal(moved!.generation, (await newest(t, vm)).generation);
    const record = await row(t, vm);
    assert.equal(record.host, moved!.to);
    assert.equal(record.instance, null);

    // The lost swtpm runs on; whatever it says now is refused.
    const late = { vm, kind: 'tpm' as const, data: Buffer.from('never acknowledged'), final: false };
    await assert.rejects(
      ingestStateChange(t.cp, 'host-b', { ...late, instance: staleInstance, after: [] }),
      StateConflictError,
    );
    await startVtpm(t.cp, vm, alice);
    assert.deepEqual(
      (await newest(t, vm)).data,
      Buffer.from('acknowledged on b'),
      'it starts from what the vault had acknowledged',
    );

    // host-b comes back: its stale swtpm is stopped, and the vTPM runs on where it was moved.
    hostB.lost = false;
    assert.deepEqual(await stopWhatHostNoLongerOwns(t.cp, 'host-b'), [vm]);
    assert.equal(hostB.isRunning(vm), false);
    assert.equal((await row(t, vm)).status, 'running');
    assert.deepEqual(await stopWhatHostNoLongerOwns(t.cp, 'host-b'), [], 'nothing more to stop');
    const fenced = await t.cp.audit.list({ vm, limit: 10 });
    assert.ok(fenced.some((e) => e.operation === 'vtpm.fence' && e.detail.host === 'host-b'));
    assert.ok(fenced.some((e) => e.operation === 'vtpm.evacuate' && e.detail.from === 'host-b'));
  });

  it('moves stopped vTPMs too, to --to when given; leaves the vTPMs of other hosts alone', async () => {
    const onB = await runningVtpm(t, { host: 'host-b' });
    const elsewhere = await runningVtpm(t);
    await loseHostB();
    const evacuation = await evacuateHost(t.cp, 'host-b', { to: 'host-c' }, alice);
    assert.deepEqual(
      evacuation.vtpms.map((v) => [v.vm, v.result, v.to]),
      [[onB, 'moved', 'host-c']],
    );
    assert.equal((await row(t, elsewhere)).host, 'host-a');
    assert.equal((await row(t, elsewhere)).status, 'running');
  });

  it("refuses a host that is up, the control plane's own, an unknown one, and a destination that is down", async () => {
    await runningVtpm(t, { host: 'host-b' });
    await assert.rejects(evacuateHost(t.cp, 'host-b', {}, alice), /host-b is up .*only a host that is down/);
    await assert.rejects(evacuateHost(t.cp, 'host-a', {}, alice), /host-a is the control plane's own host/);
    await assert.rejects(evacuateHost(t.cp, 'host-z', {}, alice), NotFoundError);
    await loseHostB();
    await assert.rejects(evacuateHost(t.cp, 'host-b', { to: 'host-b' }, alice), InvalidArgumentError);
    hostC.lost = true;
    while ((await t.cp.fleet.host('host-c'))?.state !== 'down') await delay(HOST_DOWN_AFTER_MS / 4);
    await assert.rejects(evacuateHost(t.cp, 'host-b', { to: 'host-c' }, alice), /host-c is down too/);
  });

  it("an admin's evacuation skips a vTPM whose secret is its project's, naming why; its owner moves it", async () => {
    const userMode = await runningVtpm(t, { host: 'host-b' });
    const delegated = randomUUID();
    await createVtpm(t.cp, { vm: delegated, version: '2.0', secretSecurity: 'deployment' }, alice);
    await startVtpm(t.cp, delegated, alice, { host: 'host-b' });
    await loseHostB();
    const operator: Principal = { name: 'op', project: 'ops', roles: ['admin', 'vtpm-operator'] };

    const byOperator = await evacuateHost(t.cp, 'host-b', {}, operator);
    const outcome = new Map(byOperator.vtpms.map((v) => [v.vm, v]));
    assert.equal(outcome.get(delegated)?.result, 'moved', 'deployment mode lets the deployment move it');
    assert.equal(outcome.get(userMode)?.result, 'skipped');
    assert.match(outcome.get(userMode)!.reason, /bound to project p1 \(secret security "user"\)/);
    assert.equal((await row(t, userMode)).host, 'host-b');

    const byOwner = await evacuateHost(t.cp, 'host-b', {}, alice);
    assert.deepEqual(
      byOwner.vtpms.map((v) => [v.vm, v.result]),
      [[userMode, 'moved']],
    );
    const justAdmin = await evacuateHost(t.cp, 'host-b', {}, admin);
    assert.deepEqual(justAdmin.vtpms, [], 'nothing is left on host-b');
  });

  it('settles a live migration the lost host took part in', async () => {
    const toB = await runningVtpm(t);
    await migrateVtpm(t.cp, toB, 'host-b', alice);
    const fromB = await runningVtpm(t, { host: 'host-b' });
    await migrateVtpm(t.cp, fromB, 'host-c', alice);
    hostC.connected.add(fromB);
    await loseHostB();

    const evacuation = await evacuateHost(t.cp, 'host-b', {}, alice);
    const outcome = new Map(evacuation.vtpms.map((v) => [v.vm, v]));
    assert.equal(outcome.get(toB)?.result, 'stays');
    assert.deepEqual([(await row(t, toB)).status, (await row(t, toB)).host], ['running', 'host-a']);
    assert.equal(outcome.get(fromB)?.result, 'moved', 'its guest had reached host-c');
    assert.deepEqual([(await row(t, fromB)).status, (await row(t, fromB)).host], ['running', 'host-c']);
  });
});
