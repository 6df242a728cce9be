/**
 * The HTTP layer over a test control plane (fake host, real store and key
 * manager), through fastify's injection: authentication per API, the one
 * error shape, and the audit of what changes.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { issueToken } from '../auth/tokens.js';
import { openTestControlPlane, type TestControlPlane } from '../orchestration/testing/control-plane-harness.js';
import { buildHttpApi } from './app.js';

let t: TestControlPlane;
let app: FastifyInstance;
let token: string;

beforeEach(async () => {
  t = await openTestControlPlane();
  app = await buildHttpApi({ cp: t.cp, logger: pino({ level: 'silent' }), version: 'test' });
  await t.cp.store.identity.insertUser({ name: 'alice', project: 'p1', roles: ['member'] });
  token = (await issueToken(t.cp.store, 'alice', null)).token;
});
afterEach(async () => {
  await app.close();
  await t.close();
});

const bearer = (value: string) => ({ authorization: `Bearer ${value}` });

describe('the HTTP API', () => {
  it('refuses every /v1 request without a valid token, known route or not, with the error shape', async () => {
    for (const url of ['/v1/vtpms', '/v1/no-such-route']) {
      const response = await app.inject({ method: 'GET', url, headers: bearer('vtpm_wrong') });
      assert.equal(response.statusCode, 401, url);
      assert.equal(response.json().error.code, 'unauthenticated');
    }
  });

  it('names the field a body gets wrong, as a 400', async () => {
    const response = await app.inject({ method: 'POST', url: '/v1/vtpms', headers: bearer(token), payload: { vm: 1 } });
    assert.equal(response.statusCode, 400);
    assert.equal(response.json().error.code, 'invalid_argument');
    assert.match(response.json().error.message, /^vm: /);
  });

  it('creates and shows a vTPM, and records the create in the audit log with its project', async () => {
    const vm = randomUUID();
    const payload = { vm, version: '2.0' };
    const created = await app.inject({ method: 'POST', url: '/v1/vtpms', headers: bearer(token), payload });
    assert.equal(created.statusCode, 201);
    assert.equal(created.json().status, 'stopped');
    assert.equal(created.json().secret_ref, undefined);
    const shown = await app.inject({ method: 'GET', url: `/v1/vtpms/${vm}`, headers: bearer(token) });
    assert.equal(shown.json().vm, vm);
    const [event] = await t.cp.audit.list({ vm, limit: 10 });
    assert.equal(event?.operation, 'vtpm.create');
    assert.equal(event?.detail.route, 'POST /v1/vtpms');
    assert.equal(event?.project, 'p1');
    assert.equal(event?.result, 'ok');
  });

  it('records operations by name, and a path no route serves as unrouted', async () => {
    const vm = randomUUID();
    await app.inject({ method: 'POST', url: '/v1/vtpms', headers: bearer(token), payload: { vm, version: '2.0' } });
    await app.inject({ method: 'POST', url: `/v1/vtpms/${vm}/start`, headers: bearer(token) });
    const events = await t.cp.audit.list({ vm, limit: 100 });
    const operations = events.map((e) => e.operation).reverse();
    assert.deepEqual(operations, ['vtpm.create', 'vtpm.start']);
    await app.inject({ method: 'DELETE', url: `/v1/no/such/route/${vm}`, headers: bearer(token) });
    const [unrouted] = await t.cp.audit.list({ limit: 1 });
    assert.equal(unrouted?.operation, 'request.unrouted');
    assert.equal(unrouted?.detail.route, undefined, 'a made-up path is not written to the log');
  });

  it("refuses an agent's report without its host's token, and a user's token there", async () => {
    for (const headers of [{}, bearer(token)]) {
      const response = await app.inject({
        method: 'POST',
        url: '/agent/v1/hosts/host-b/exits',
        headers,
        payload: { vm: randomUUID(), code: 0, signal: null },
      });
      assert.equal(response.statusCode, 401);
      assert.equal(response.json().error.code, 'unauthenticated');
    }
  });
});

describe('order of refusals', () => {
  it("an admin exporting another project's vTPM with a short passphrase is told it is forbidden", async () => {
    const vm = randomUUID();
    await app.inject({ method: 'POST', url: '/v1/vtpms', headers: bearer(token), payload: { vm, version: '2.0' } });
    await t.cp.store.identity.insertUser({ name: 'root', project: 'ops', roles: ['admin'] });
    const admin = (await issueToken(t.cp.store, 'root', null)).token;
    const url = `/v1/vtpms/${vm}/export`;
    const refused = await app.inject({ method: 'POST', url, headers: bearer(admin), payload: { passphrase: 'short' } });
    assert.equal(refused.statusCode, 403);
    const owner = await app.inject({ method: 'POST', url, headers: bearer(token), payload: { passphrase: 'short' } });
    assert.equal(owner.statusCode, 400);
    assert.match(owner.json().error.message, /^passphrase: expected at least 12 characters/);
  });
});

describe('isolation between projects', () => {
  it("another project's vTPM answers as a missing one, and the audit view does not name its project", async () => {
    await t.cp.store.identity.insertUser({ name: 'bob', project: 'p2', roles: ['member'] });
    const bobs = (await issueToken(t.cp.store, 'bob', null)).token;
    const vm = randomUUID();
    const payload = { vm, version: '2.0' };
    assert.equal(
      (await app.inject({ method: 'POST', url: '/v1/vtpms', headers: bearer(bobs), payload })).statusCode,
      201,
    );
    const missing = randomUUID();
    const theirs = await app.inject({ method: 'POST', url: `/v1/vtpms/${vm}/start`, headers: bearer(token) });
    const none = await app.inject({ method: 'POST', url: `/v1/vtpms/${missing}/start`, headers: bearer(token) });
    assert.equal(theirs.statusCode, 404);
    assert.deepEqual(theirs.json().error.message.replace(vm, 'VM'), none.json().error.message.replace(missing, 'VM'));
    const events = (await app.inject({ method: 'GET', url: '/v1/events', headers: bearer(token) })).json().events;
    const aboutTheirs = events.filter((e: { vm: string | null }) => e.vm === vm);
    assert.equal(aboutTheirs.length, 1, "alice's own refused attempt is hers to see");
    assert.equal(JSON.stringify(events).includes('p2'), false, "no event alice sees names bob's project");
  });
});

describe('unauthenticated traffic', () => {
  it('is throttled per address after many failures, while a valid token still passes', async () => {
    let last = 0;
    for (let i = 0; i < 60; i += 1) {
      last = (await app.inject({ method: 'GET', url: '/v1/vtpms', headers: bearer('vtpm_wrong') })).statusCode;
    }
    assert.equal(last, 429);
    const bare = await app.inject({ method: 'GET', url: '/v1/vtpms' });
    assert.equal(bare.statusCode, 429);
    assert.equal(bare.json().error.code, 'too_many_requests');
    assert.equal((await app.inject({ method: 'GET', url: '/v1/vtpms', headers: bearer(token) })).statusCode, 200);
  });
});
