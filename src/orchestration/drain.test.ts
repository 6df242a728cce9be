import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import type { Principal } from '../auth/policy.js';
import { ForbiddenError, NoValidHostError, NotFoundError } from '../errors.js';
import { createVtpm } from './create.js';
import { drainHost } from './drain.js';
import { setHostDisabled } from './hosts.js';
import { startVtpm } from './start.js';
import { stopVtpm } from './stop.js';
import { FakeHostAgent } from './testing/fake-host-agent.js';
import { alice, openTestControlPlane, type TestControlPlane } from './testing/control-plane-harness.js';
import { row, runningVtpm } from './testing/fixtures.js';

const admin: Principal = { name: 'root', project: 'ops', roles: ['admin'] };

let t: TestControlPlane;
let hostB: FakeHostAgent;
beforeEach(async () => {
  hostB = new FakeHostAgent('host-b');
  t = await openTestControlPlane({ hosts: [hostB], hostDownAfterMs: 200 });
});
afterEach(() => t.close());

/** A stopped vTPM of alice's whose host is host-b. */
async function stoppedOnB(): Promise<string> {
  const vm = await runningVtpm(t, { host: 'host-b' });
  await stopVtpm(t.cp, vm, alice);
  await t.settle();
  return vm;
}

describe('drain', () => {
  it("moves a host's stopped vTPMs off it at once, keeps its running ones, and places nothing new there", async () => {
    const stopped = await stoppedOnB();
    const running = await runningVtpm(t, { host: 'host-b' });

    const drained = await drainHost(t.cp, 'host-b', 'retiring', admin);
    const outcome = new Map(drained.vtpms.map((v) => [v.vm, v]));
    assert.deepEqual([outcome.get(stopped)?.result, outcome.get(stopped)?.to], ['moved', 'host-a']);
    assert.equal((await row(t, stopped)).host, 'host-a', "an admin moves another project's stopped vTPM");
    assert.equal(outcome.get(running)?.result, 'stays');
    assert.match(outcome.get(running)!.reason, /leaves with its VM's live migration/);
    assert.ok(hostB.isRunning(running), 'a drain stops nothing');
    assert.equal((await t.cp.fleet.host('host-b'))?.status, 'draining');

    await setHostDisabled(t.cp, 'host-a', 'only host-b is left', admin);
    await assert.rejects(
      createVtpm(t.cp, { vm: randomUUID(), version: '2.0' }, alice),
      (error: unknown) => error instanceof NoValidHostError && /host-b is draining \(retiring\)/.test(error.message),
    );
  });

  it('a vTPM stopped on a draining host starts elsewhere, as off a down host; --host still reaches it', async () => {
    const vm = await stoppedOnB();
    await t.cp.store.hosts.setDisabled('host-b', 'retiring', { draining: true });
    const started = await startVtpm(t.cp, vm, alice);
    assert.equal(started.host, 'host-a');
    await stopVtpm(t.cp, vm, alice);
    await t.settle();
    assert.equal((await startVtpm(t.cp, vm, alice, { host: 'host-b' })).host, 'host-b');
    await stopVtpm(t.cp, vm, alice);
    await t.settle();

    await setHostDisabled(t.cp, 'host-b', null, admin);
    assert.equal((await t.cp.fleet.host('host-b'))?.status, 'enabled', 'enable ends the drain');
    hostB.lost = true;
    while ((await t.cp.fleet.host('host-b'))?.state !== 'down') await delay(50);
    assert.equal((await startVtpm(t.cp, vm, alice)).host, 'host-a', 'its host is down: it starts on another');
  });

  it('is for admins, on a host that exists', async () => {
    await assert.rejects(drainHost(t.cp, 'host-b', 'x', alice), ForbiddenError);
    await assert.rejects(drainHost(t.cp, 'host-z', 'x', admin), NotFoundError);
  });
});
