/**
 * `vtpm host disable|enable` through the API: a disabled host gets no new
 * vTPM (the refusal names it with the admin's reason), keeps the ones it
 * holds, and only an admin may change it.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { issueToken } from '../../auth/tokens.js';
import { openTestControlPlane, type TestControlPlane } from '../../orchestration/testing/control-plane-harness.js';
import { buildHttpApi } from '../app.js';

let t: TestControlPlane;
let app: FastifyInstance;
let admin: string;
let member: string;

beforeEach(async () => {
  t = await openTestControlPlane();
  app = await buildHttpApi({ cp: t.cp, logger: pino({ level: 'silent' }), version: 'test' });
  await t.cp.store.identity.insertUser({ name: 'root', project: 'ops', roles: ['admin'] });
  await t.cp.store.identity.insertUser({ name: 'alice', project: 'p1', roles: ['member'] });
  admin = (await issueToken(t.cp.store, 'root', null)).token;
  member = (await issueToken(t.cp.store, 'alice', null)).token;
});
afterEach(async () => {
  await app.close();
  await t.close();
});

const call = (token: string, method: 'GET' | 'POST', url: string, payload?: object) =>
  app.inject({ method, url, headers: { authorization: `Bearer ${token}` }, ...(payload && { payload }) });

async function hostA() {
  const listed = await call(admin, 'GET', '/v1/hosts');
  assert.equal(listed.statusCode, 200);
  return listed.json().hosts.find((h: { name: string }) => h.name === 'host-a');
}

describe('disabling a host', () => {
  it('keeps new vTPMs off it with the reason, keeps the ones it runs, and takes them again once enabled', async () => {
    const running = randomUUID();
    assert.equal((await call(member, 'POST', '/v1/vtpms', { vm: running, version: '2.0' })).statusCode, 201);
    assert.equal((await call(member, 'POST', `/v1/vtpms/${running}/start`)).statusCode, 200);

    const disabled = await call(admin, 'POST', '/v1/hosts/host-a/disable', { reason: 'kernel upgrade' });
    assert.equal(disabled.statusCode, 200, disabled.body);
    assert.deepEqual(disabled.json(), { name: 'host-a', status: 'disabled' });
    assert.equal((await hostA()).status, 'disabled');
    assert.equal((await hostA()).state, 'up', "the control plane's own host is up while it runs");
    assert.equal((await hostA()).disabled_reason, 'kernel upgrade');

    const fresh = randomUUID();
    const refused = await call(member, 'POST', '/v1/vtpms', { vm: fresh, version: '2.0' });
    assert.equal(refused.statusCode, 409);
    assert.equal(refused.json().error.code, 'no_valid_host');
    assert.match(refused.json().error.message, /host-a is disabled \(kernel upgrade\)/);
    assert.equal((await call(member, 'POST', `/v1/vtpms/${running}/stop`)).statusCode, 200);
    assert.equal((await call(member, 'POST', `/v1/vtpms/${running}/start`)).statusCode, 200, 'its own vTPM starts');

    const enabled = await call(admin, 'POST', '/v1/hosts/host-a/enable');
    assert.deepEqual(enabled.json(), { name: 'host-a', status: 'enabled' });
    assert.equal((await hostA()).disabled_reason, null);
    assert.equal((await call(member, 'POST', '/v1/vtpms', { vm: fresh, version: '2.0' })).statusCode, 201);
  });

  it('is for admins, names an unknown host, and refuses a reason that is not text', async () => {
    const forbidden = await call(member, 'POST', '/v1/hosts/host-a/disable', {});
    assert.equal(forbidden.statusCode, 403);
    assert.equal((await hostA()).status, 'enabled');
    const unknown = await call(admin, 'POST', '/v1/hosts/host-z/disable', {});
    assert.equal(unknown.statusCode, 404);
    assert.match(unknown.json().error.message, /host host-z not found/);
    for (const reason of ['', { why: 'x' }]) {
      const bad = await call(admin, 'POST', '/v1/hosts/host-a/disable', { reason });
      assert.equal(bad.statusCode, 400);
      assert.match(bad.json().error.message, /reason/);
    }
    assert.equal((await hostA()).status, 'enabled');
    const events = await call(admin, 'GET', '/v1/events?limit=50');
    assert.ok(events.body.includes('host.disable'), 'the refused attempts are in the audit log');
  });
});
