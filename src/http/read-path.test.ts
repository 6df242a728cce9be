/**
 * The API's read path: a token's revocation or expiry holds from the very
 * next request, on this process and when another one (a replica on the same
 * database) made it; a read asks the store for its vTPM once; a read that
 * uses a secret is still audited with its vTPM's project.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { AuditedKeyManager } from '../audit/audited-key-manager.js';
import { issueToken } from '../auth/tokens.js';
import { openTestControlPlane, type TestControlPlane } from '../orchestration/testing/control-plane-harness.js';
import { openEmbeddedStore } from '../store/index.js';
import { buildHttpApi } from './app.js';

let t: TestControlPlane;
let app: FastifyInstance;
let token: string;
let tokenId: number;
let vm: string;

const bearer = (value: string) => ({ authorization: `Bearer ${value}` });
const show = (as = token) => app.inject({ method: 'GET', url: `/v1/vtpms/${vm}`, headers: bearer(as) });

beforeEach(async () => {
  t = await openTestControlPlane();
  app = await buildHttpApi({ cp: t.cp, logger: pino({ level: 'silent' }), version: 'test' });
  await t.cp.store.identity.insertUser({ name: 'alice', project: 'p1', roles: ['member'] });
  ({
    token,
    record: { id: tokenId },
  } = await issueToken(t.cp.store, 'alice', null));
  vm = randomUUID();
  const created = await app.inject({
    method: 'POST',
    url: '/v1/vtpms',
    headers: bearer(token),
    payload: { vm, version: '2.0' },
  });
  assert.equal(created.statusCode, 201);
});
afterEach(async () => {
  await app.close();
  await t.close();
});

describe('a token', () => {
  it('revoked through the API is refused on the very next request', async () => {
    await t.cp.store.identity.insertUser({ name: 'root', project: 'ops', roles: ['admin'] });
    const admin = (await issueToken(t.cp.store, 'root', null)).token;
    assert.equal((await show()).statusCode, 200);
    const revoked = await app.inject({ method: 'DELETE', url: `/v1/tokens/${tokenId}`, headers: bearer(admin) });
    assert.equal(revoked.statusCode, 204);
    const refused = await show();
    assert.equal(refused.statusCode, 401);
    assert.equal(refused.json().error.code, 'unauthenticated');
  });

  it('revoked by another process on the same database is refused on the very next request', async () => {
    assert.equal((await show()).statusCode, 200);
    const replica = await openEmbeddedStore(t.dataDir);
    try {
      assert.equal(await replica.identity.revokeToken(tokenId), true);
    } finally {
      await replica.close();
    }
    assert.equal((await show()).statusCode, 401);
  });

  it('past its expiry, as another process recorded it, is refused on the very next request', async () => {
    const expiring = await issueToken(t.cp.store, 'alice', new Date(Date.now() + 3_600_000).toISOString());
    assert.equal((await show(expiring.token)).statusCode, 200);
    const replica = await openEmbeddedStore(t.dataDir);
    try {
      // What an hour's wait would do, without waiting: the expiry is moved into the past.
      const expired = new Date(Date.now() - 1000).toISOString();
      await setExpiry(replica, expiring.record.id, expired);
    } finally {
      await replica.close();
    }
    assert.equal((await show(expiring.token)).statusCode, 401);
    assert.equal((await show()).statusCode, 200, 'the other token still passes');
  });
});

/** The store has no operation that changes an expiry; the test reaches the row through kysely directly. */
async function setExpiry(store: Awaited<ReturnType<typeof openEmbeddedStore>>, id: number, at: string): Promise<void> {
  const db = (store as unknown as { db: import('kysely').Kysely<import('../store/schema.js').Database> }).db;
  await db.updateTable('api_tokens').set({ expires_at: at }).where('id', '=', id).execute();
}

describe('a read', () => {
  it('asks the store for its vTPM once', async () => {
    const vtpms = t.cp.store.vtpms;
    const get = vtpms.get.bind(vtpms);
    let reads = 0;
    vtpms.get = (asked) => {
      reads += 1;
      return get(asked);
    };
    const shown = await show();
    assert.equal(shown.statusCode, 200);
    assert.equal(shown.json().vm, vm);
    assert.equal(reads, 1);
  });

  it('that uses a secret is audited with its vTPM and project', async () => {
    // As `vtpm serve` wires it (serve/start-server.ts): every secret read goes through the audit.
    const keys = new AuditedKeyManager(t.cp.keys, t.cp.audit, () => Promise.reject(new Error('no rotation here')));
    const audited = await buildHttpApi({ cp: { ...t.cp, keys }, logger: pino({ level: 'silent' }), version: 'test' });
    const ek = await audited.inject({ method: 'GET', url: `/v1/vtpms/${vm}/ek`, headers: bearer(token) });
    await audited.close();
    assert.equal(ek.statusCode, 200);
    const [read] = (await t.cp.audit.list({ vm, limit: 10 })).filter((e) => e.operation === 'secret.read');
    assert.equal(read?.actor, 'alice');
    assert.equal(read?.project, 'p1');
  });
});
