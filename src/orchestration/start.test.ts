import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { type RequestAnswer, requestContext } from '../audit/audit-log.js';
import { AuditedKeyManager } from '../audit/audited-key-manager.js';
import { NoValidHostError, StateConflictError } from '../errors.js';
import type { StartRequest } from '../agent/host-agent.js';
import { embeddedDatabase } from '../store/index.js';
import { walCommits } from '../store/sqlite/wal-commits.js';
import type { ControlPlane } from './control-plane.js';
import { restoreGeneration } from './restore.js';
import { startVtpm } from './start.js';
import { ingestStateChange } from './state-ingest.js';
import { stopVtpm } from './stop.js';
import { FakeHostAgent } from './testing/fake-host-agent.js';
import { alice, openTestControlPlane, type TestControlPlane } from './testing/control-plane-harness.js';
import { generations, newest, row, stoppedVtpm, withTwoGenerations } from './testing/fixtures.js';

let t: TestControlPlane;
let hostB: FakeHostAgent;
let tpm12Only: FakeHostAgent;
beforeEach(async () => {
  hostB = new FakeHostAgent('host-b');
  tpm12Only = new FakeHostAgent('host-c', ['COMPUTE_SECURITY_TPM_1_2', 'COMPUTE_SECURITY_TPM_TIS']);
  t = await openTestControlPlane({ hosts: [hostB, tpm12Only] });
});
afterEach(() => t.close());

async function assertStoppedOnA(vm: string) {
  const record = await row(t, vm);
  assert.equal(record.status, 'stopped');
  assert.equal(record.socket, null);
  assert.equal(record.host, 'host-a');
  assert.equal(t.cp.vaultKeys.get(vm), undefined, 'no vault key is held');
}

describe('start', () => {
  it('runs exactly the vault newest generation, and marks the vTPM running with its socket', async () => {
    const { vm, manufactured } = await withTwoGenerations(t);
    await restoreGeneration(t.cp, vm, 1, alice);
    t.local.calls.length = 0;

    const started = await startVtpm(t.cp, vm, alice);

    assert.equal(started.status, 'running');
    assert.equal(started.socket, t.local.devicePaths(vm).socket);
    const record = await row(t, vm);
    assert.equal(record.status, 'running');
    assert.equal(record.socket, t.local.devicePaths(vm).socket);
    assert.deepEqual(t.local.calls, [`start ${vm}`]);
    assert.ok(t.local.isRunning(vm));
    const head = await newest(t, vm);
    assert.equal(head.generation, 3);
    assert.deepEqual(head.data, manufactured, 'the restored generation, not the working copy the guest left');
    assert.deepEqual(t.local.working.get(vm)?.tpm, head.data);
    assert.ok(t.cp.vaultKeys.get(vm), 'the vault key is held while it runs');
  });

  it('a UEFI guest runs its variable store from the vault too', async () => {
    const vm = await stoppedVtpm(t, { uefi: true });
    await startVtpm(t.cp, vm, alice);
    assert.deepEqual(t.local.working.get(vm)?.nvram, (await newest(t, vm, 'nvram')).data);
  });

  it("commits a guest's write as a sync generation, and the final state on stop as a stop generation", async () => {
    const vm = await stoppedVtpm(t);
    await startVtpm(t.cp, vm, alice);
    await t.local.guestWrites(vm, Buffer.from('first write'));
    assert.deepEqual(await generations(t, vm), [
      ['tpm', 2, 'sync'],
      ['tpm', 1, 'create'],
    ]);
    t.local.working.set(vm, { tpm: Buffer.from('left at exit') });
    await stopVtpm(t.cp, vm, alice);
    await t.settle();
    assert.deepEqual(await generations(t, vm), [
      ['tpm', 3, 'stop'],
      ['tpm', 2, 'sync'],
      ['tpm', 1, 'create'],
    ]);
    assert.deepEqual((await newest(t, vm)).data, Buffer.from('left at exit'));
    assert.equal(t.cp.vaultKeys.get(vm), undefined, 'the exit dropped the vault key');
  });

  it("when the agent's start fails: stopped, no socket, no vault key, host unchanged; no report taken", async () => {
    const vm = await stoppedVtpm(t);
    t.local.failNext('start');
    await assert.rejects(startVtpm(t.cp, vm, alice), /start failed/);
    await assertStoppedOnA(vm);
    assert.equal(t.local.isRunning(vm), false);
    const late = { vm, kind: 'tpm' as const, data: Buffer.from('late'), final: false, instance: 'late', after: [] };
    await assert.rejects(ingestStateChange(t.cp, 'host-a', late));
    assert.deepEqual(await generations(t, vm), [['tpm', 1, 'create']]);
  });

  it("when another host's start fails: the vTPM stays on its own host", async () => {
    const vm = await stoppedVtpm(t);
    hostB.failNext('start');
    await assert.rejects(startVtpm(t.cp, vm, alice, { host: 'host-b' }), /start failed/);
    await assertStoppedOnA(vm);
    // What host-b may have launched is stopped again.
    assert.deepEqual(hostB.calls, [`start ${vm}`, `stop ${vm}`]);
  });

  it('on a host no agent is connected for: stopped, host unchanged, nothing asked of any host', async () => {
    const vm = await stoppedVtpm(t);
    await assert.rejects(startVtpm(t.cp, vm, alice, { host: 'host-z' }), StateConflictError);
    await assertStoppedOnA(vm);
    assert.deepEqual(
      t.local.calls.filter((c) => c.startsWith('start')),
      [],
    );
  });

  it('on a host that does not offer the TPM version: stopped, host unchanged', async () => {
    const vm = await stoppedVtpm(t);
    await assert.rejects(startVtpm(t.cp, vm, alice, { host: 'host-c' }), NoValidHostError);
    await assertStoppedOnA(vm);
    assert.deepEqual(tpm12Only.calls, []);
  });

  it('when the key manager cannot read the secret: stopped, nothing started', async () => {
    const vm = await stoppedVtpm(t);
    t.keys.failNext('readSecret');
    await assert.rejects(startVtpm(t.cp, vm, alice, { host: 'host-b' }), /key manager unavailable/);
    await assertStoppedOnA(vm);
    assert.deepEqual(hostB.calls, []);
  });

  it('on another host: the vTPM moves there, with the state of the vault', async () => {
    const vm = await stoppedVtpm(t);
    await startVtpm(t.cp, vm, alice, { host: 'host-b' });
    const record = await row(t, vm);
    assert.equal(record.host, 'host-b');
    assert.equal(record.status, 'running');
    assert.ok(hostB.isRunning(vm));
    assert.equal(t.local.isRunning(vm), false);
    assert.deepEqual(hostB.working.get(vm)?.tpm, (await newest(t, vm)).data);
    await hostB.guestWrites(vm, Buffer.from('on b'));
    assert.deepEqual(await generations(t, vm), [
      ['tpm', 2, 'sync'],
      ['tpm', 1, 'create'],
    ]);
  });

  it('already running: answered as it runs, unchanged, reading no secret; on another host: refused', async () => {
    const vm = await stoppedVtpm(t);
    const first = await startVtpm(t.cp, vm, alice);
    assert.equal(first.unchanged, undefined);
    // A read of the secret would fail.
    t.keys.failNext('readSecret');
    const again = await startVtpm(t.cp, vm, alice);
    assert.deepEqual([again.unchanged, again.socket, again.host], [true, first.socket, first.host]);
    t.keys.failNext('readSecret', 0);
    await assert.rejects(startVtpm(t.cp, vm, alice, { host: 'host-b' }), { code: 'state_conflict' });
    assert.deepEqual([(await row(t, vm)).status, (await row(t, vm)).host], ['running', first.host]);
    assert.ok(t.local.isRunning(vm));
  });
});

/**
 * A start as the API runs it: the key manager records every read of a secret, and the request's own entry
 * waits to be committed. What the host is asked is observed as the host sees it, when it is asked.
 */
async function startAsTheApiDoes(vm: string) {
  const cp: ControlPlane = {
    ...t.cp,
    keys: new AuditedKeyManager(t.cp.keys, t.cp.audit, () => Promise.reject(new Error('no rotation here'))),
  };
  const answer: RequestAnswer = {
    actor: alice,
    succeeded: () => ({ operation: 'vtpm.start', vm, project: alice.project, result: 'ok', detail: { status: 200 } }),
  };
  const whenAsked: { status?: string; log?: string[] } = {};
  const start = t.local.start.bind(t.local);
  t.local.start = async (request: StartRequest) => {
    whenAsked.status = (await row(t, vm)).status;
    whenAsked.log = await operationsLogged(vm);
    return start(request);
  };
  const commitsBefore = await walCommits(embeddedDatabase(t.dataDir));
  const outcome = await requestContext
    .run({ principal: alice, vm, project: async () => alice.project, secretsRead: new Set(), answer }, () =>
      startVtpm(cp, vm, alice),
    )
    .then(
      () => undefined,
      (error: unknown) => error,
    );
  return { outcome, answer, whenAsked, commits: (await walCommits(embeddedDatabase(t.dataDir))) - commitsBefore };
}

async function operationsLogged(vm: string): Promise<string[]> {
  return (await t.cp.audit.list({ vm, limit: 100 })).map((event) => `${event.operation} ${event.result}`).reverse();
}

describe('what a start writes', () => {
  it('two commits: the claim with the secret read before swtpm runs, the end with the request entry', async () => {
    const vm = await stoppedVtpm(t);
    const before = await operationsLogged(vm);

    const { outcome, answer, whenAsked, commits } = await startAsTheApiDoes(vm);

    assert.equal(outcome, undefined);
    assert.equal(commits, 2);
    assert.equal(whenAsked.status, 'starting');
    assert.deepEqual(whenAsked.log, [...before, 'secret.read ok']);
    assert.deepEqual(await operationsLogged(vm), [...before, 'secret.read ok', 'vtpm.start ok']);
    assert.equal(answer.committed?.operation, 'vtpm.start', 'the API has nothing left to add');
    assert.equal((await row(t, vm)).status, 'running');
  });

  it('a launch that fails after the claim: stopped, the read recorded once, the request entry to the API', async () => {
    const vm = await stoppedVtpm(t);
    const before = await operationsLogged(vm);
    t.local.failNext('start');

    const { outcome, answer, whenAsked } = await startAsTheApiDoes(vm);

    assert.match(String(outcome), /start failed/);
    assert.equal(whenAsked.status, 'starting');
    await assertStoppedOnA(vm);
    assert.deepEqual(await operationsLogged(vm), [...before, 'secret.read ok']);
    assert.equal(answer.committed, undefined, 'the API records the failed answer itself');
  });

  it('a start refused before its claim reads no secret', async () => {
    const vm = await stoppedVtpm(t);
    await startVtpm(t.cp, vm, alice);
    const before = await operationsLogged(vm);
    await t.cp.store.vtpms.update(vm, { status: 'stopping' });

    const { outcome, commits } = await startAsTheApiDoes(vm);

    assert.ok(outcome instanceof StateConflictError);
    assert.equal(commits, 0);
    assert.deepEqual(await operationsLogged(vm), before);
  });
});
