/**
 * What an operator's tooling reads without a token: `/metrics` in
 * Prometheus' text format (counts by host and status, durations by declared
 * route, never a VM id) and `/readyz` (the database and the key manager).
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

const bearer = () => ({ authorization: `Bearer ${token}` });
const scrape = async () => {
  const response = await app.inject({ method: 'GET', url: '/metrics' });
  assert.equal(response.statusCode, 200);
  assert.match(String(response.headers['content-type']), /^text\/plain; version=0\.0\.4/);
  return response.body;
};
/** The value of the series `name` with exactly these labels, in whichever order they are printed. */
const seriesValue = (text: string, name: string, labels: Record<string, string> = {}) => {
  const wanted = Object.entries(labels)
    .map(([label, value]) => `${label}="${value}"`)
    .sort();
  for (const line of text.split('\n')) {
    const match = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const printed = (match[2] ?? '').split(',').filter(Boolean).sort();
    if (printed.join() === wanted.join()) return Number(match[3]);
  }
  return undefined;
};

beforeEach(async () => {
  t = await openTestControlPlane();
  app = await buildHttpApi({ cp: t.cp, logger: pino({ level: 'silent' }), version: 'test' });
  await t.cp.store.identity.insertUser({ name: 'alice', project: 'p1', roles: ['member'] });
  ({ token } = await issueToken(t.cp.store, 'alice', null));
});
afterEach(async () => {
  await app.close();
  await t.close();
});

describe('/metrics', () => {
  it('counts vTPMs by host and status, vault commits, and requests by declared route, without VM ids', async () => {
    const vms = [randomUUID(), randomUUID()];
    for (const vm of vms) {
      const created = await app.inject({
        method: 'POST',
        url: '/v1/vtpms',
        headers: bearer(),
        payload: { vm, version: '2.0' },
      });
      assert.equal(created.statusCode, 201);
    }
    const started = await app.inject({ method: 'POST', url: `/v1/vtpms/${vms[0]}/start`, headers: bearer() });
    assert.equal(started.statusCode, 200);
    await app.inject({ method: 'GET', url: `/v1/vtpms/${vms[1]}`, headers: bearer() });

    const text = await scrape();
    assert.equal(seriesValue(text, 'vtpm_vtpms', { status: 'running', host: 'host-a' }), 1);
    assert.equal(seriesValue(text, 'vtpm_vtpms', { status: 'stopped', host: 'host-a' }), 1);
    assert.equal(seriesValue(text, 'vtpm_vault_commits_total', { reason: 'create' }), 2);
    assert.equal(
      seriesValue(text, 'vtpm_http_request_duration_seconds_count', {
        method: 'GET',
        route: '/v1/vtpms/:vm',
        status: '200',
      }),
      1,
    );
    assert.equal(
      seriesValue(text, 'vtpm_key_manager_duration_seconds_count', { operation: 'read', result: 'ok' }),
      undefined,
    );
    for (const vm of vms) assert.ok(!text.includes(vm), 'no VM id in the metrics');
  });

  it('forgets a status nobody is in any more', async () => {
    const vm = randomUUID();
    await app.inject({ method: 'POST', url: '/v1/vtpms', headers: bearer(), payload: { vm, version: '2.0' } });
    await app.inject({ method: 'POST', url: `/v1/vtpms/${vm}/start`, headers: bearer() });
    assert.equal(seriesValue(await scrape(), 'vtpm_vtpms', { status: 'running', host: 'host-a' }), 1);
    await app.inject({ method: 'POST', url: `/v1/vtpms/${vm}/stop`, headers: bearer() });
    // A second's reuse of a collection: the next scrape after it reads the database again.
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const text = await scrape();
    assert.equal(seriesValue(text, 'vtpm_vtpms', { status: 'running', host: 'host-a' }), undefined);
    assert.equal(seriesValue(text, 'vtpm_vtpms', { status: 'stopped', host: 'host-a' }), 1);
  });

  it("tells how long ago each remote host's agent was heard of, and nothing of the control plane's own", async () => {
    await t.cp.fleet.register('host-r', 'http://127.0.0.1:7399');
    const text = await scrape();
    const age = seriesValue(text, 'vtpm_host_heartbeat_age_seconds', { host: 'host-r' });
    assert.ok(age !== undefined && age >= 0 && age < 60, `age ${age}`);
    assert.equal(seriesValue(text, 'vtpm_host_heartbeat_age_seconds', { host: 'host-a' }), undefined);
  });

  it('counts the reasons of placements that found no host', async () => {
    // The only host no longer offers TPM 1.2.
    const [host] = await t.cp.store.hosts.list();
    const traits = host!.traits.filter((trait) => trait !== 'COMPUTE_SECURITY_TPM_1_2');
    await t.cp.store.hosts.upsert({ ...host!, traits });
    const refused = await app.inject({
      method: 'POST',
      url: '/v1/vtpms',
      headers: bearer(),
      payload: { vm: randomUUID(), version: '1.2' },
    });
    assert.equal(refused.statusCode, 409, refused.body);
    assert.equal(seriesValue(await scrape(), 'vtpm_scheduler_rejections_total', { reason: 'missing_trait' }), 1);
  });
});

describe('/readyz', () => {
  it('is ready while the database and the key manager answer, and names the one that does not', async () => {
    const ready = await app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(ready.statusCode, 200);
    assert.deepEqual(ready.json(), { status: 'ready', checks: { database: 'ok', key_manager: 'ok' } });

    t.keys.failNext('checkReachable');
    const notReady = await app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(notReady.statusCode, 503);
    const { error } = notReady.json();
    assert.equal(error.code, 'not_ready');
    assert.equal(error.details.checks.database, 'ok');
    assert.match(error.details.checks.key_manager, /key manager unavailable/);
  });
});
