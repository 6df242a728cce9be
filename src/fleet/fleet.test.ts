/**
 * The fleet at start-up connects to every registered remote host with the
 * agent token it keeps in the key manager. A key manager that is away must
 * not stop the control plane from starting: that host is connected once its
 * token can be read, and its agent's reports wait until then.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import pino from 'pino';
import { NoValidHostError, UnauthenticatedError } from '../errors.js';
import { openTestControlPlane, type TestControlPlane } from '../orchestration/testing/control-plane-harness.js';
import { Fleet } from './fleet.js';

let t: TestControlPlane;
before(async () => {
  t = await openTestControlPlane();
});
after(() => t.close());

describe('Fleet.connectRegistered', () => {
  it('connects a remote host once the key manager gives its token, when it could not at start-up', async () => {
    const { token } = await t.cp.fleet.register('host-b', 'http://127.0.0.1:7391');
    // The control plane starts again while its key manager is away.
    t.keys.failNext('readSecret', 2);
    const fleet = new Fleet({
      store: t.cp.store,
      keys: t.keys,
      logger: pino({ level: 'silent' }),
      manufacturer: t.local,
    });
    await fleet.connectRegistered();
    assert.throws(() => fleet.authenticateAgent('host-b', token), UnauthenticatedError);

    const deadline = Date.now() + 10_000;
    while (!fleet.isConnected('host-b') && Date.now() < deadline) await delay(50);
    fleet.authenticateAgent('host-b', token);
    assert.equal(fleet.agentFor('host-b').hostName, 'host-b');
  });
});

describe('host liveness', () => {
  it("is down once its agent's heartbeats stop for --host-down-after, up again at the next one", async () => {
    const fleet = new Fleet({
      store: t.cp.store,
      keys: t.keys,
      logger: pino({ level: 'silent' }),
      manufacturer: t.local,
      hostDownAfterMs: 200,
    });
    await fleet.register('host-c', 'http://127.0.0.1:7392');
    const traits = ['COMPUTE_SECURITY_TPM_2_0', 'COMPUTE_SECURITY_TPM_TIS'];
    await t.cp.store.hosts.upsert({ name: 'host-c', traits, capabilities: {}, max_vtpms: null });
    const stateOf = async (name: string) => (await fleet.list()).find((h) => h.name === name)?.state;
    assert.equal(await stateOf('host-c'), 'up', 'registered just now');
    await delay(400);
    assert.equal(await stateOf('host-c'), 'down');
    assert.equal(await stateOf(t.local.hostName), 'up', "the control plane's own host does not depend on heartbeats");
    await t.cp.store.hosts.setDisabled(t.local.hostName, 'only host-c is left');
    try {
      await assert.rejects(
        fleet.place({ version: '2.0', model: 'tpm-tis' }),
        (error: unknown) =>
          error instanceof NoValidHostError &&
          error.reasons.includes('down') &&
          /host-c is down \(its agent was last heard of at /.test(error.message),
      );
    } finally {
      await t.cp.store.hosts.setDisabled(t.local.hostName, null);
    }
    assert.equal(await fleet.heartbeat('host-c'), true, 'the heartbeat of a host that was down says it came back');
    assert.equal(await stateOf('host-c'), 'up');
    assert.equal(await fleet.heartbeat('host-c'), false);
  });
});
