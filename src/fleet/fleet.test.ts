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
import { UnauthenticatedError } from '../errors.js';
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
