import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { LocalKeyManager } from '../keys/local/local-key-manager.js';
import { openEmbeddedStore, type Store } from '../store/index.js';
import { AuditLog, requestContext } from './audit-log.js';
import { AuditedKeyManager } from './audited-key-manager.js';

let dir: string;
let store: Store;
let audit: AuditLog;
let keys: AuditedKeyManager;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vtpm-audited-keys-'));
  store = await openEmbeddedStore(dir);
  audit = new AuditLog(store);
  keys = new AuditedKeyManager(await LocalKeyManager.open(dir), audit, () => Promise.reject(new Error('unused')));
});
afterEach(async () => {
  await keys.close();
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

const alice = { name: 'alice', project: 'p1', roles: ['member' as const] };
const reads = async () => (await audit.list({ limit: 100 })).filter((e) => e.operation === 'secret.read');

describe('AuditedKeyManager', () => {
  it("records one read per secret per request, as the request's principal, and each read outside one", async () => {
    const [first, second] = [
      await keys.createSecret('a', { project: 'p1' }),
      await keys.createSecret('b', { project: 'p1' }),
    ];
    await requestContext.run({ principal: alice, secretsRead: new Set() }, async () => {
      for (const ref of [first, first, second, first]) await keys.readSecret(ref);
    });
    assert.deepEqual((await reads()).map((e) => [e.actor, e.detail.secret]).reverse(), [
      ['alice', first],
      ['alice', second],
    ]);
    await keys.readSecret(first);
    await keys.readSecret(first);
    assert.equal((await reads()).length, 4, 'reads of no request (a state report, start-up) are each recorded');
  });
});
