/**
 * Rotation by replacement on a real SQLite store and a real (local) key
 * manager, including each point a crash can leave it at.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, beforeEach, describe, it } from 'node:test';
import { KeyManagerError } from '../errors.js';
import { LocalKeyManager } from './local/local-key-manager.js';
import { openEmbeddedStore, SECRET_SETTINGS, type Store } from '../store/index.js';
import { finishSecretReplacements, rotateByReplacement } from './rotation-by-replacement.js';

const roots: string[] = [];
after(() => Promise.all(roots.map((root) => rm(root, { recursive: true, force: true }))));

let store: Store;
let keys: LocalKeyManager;
let ref: string;
let value: Buffer;

beforeEach(async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'vtpm-rotation-test-'));
  roots.push(dataDir);
  store = await openEmbeddedStore(dataDir);
  keys = await LocalKeyManager.open(dataDir);
  ref = await keys.createSecret();
  value = await keys.readSecret(ref);
  await store.settings.setOnce(SECRET_SETTINGS.caRootKeyPassword, ref);
});

const current = async () => (await store.settings.get(SECRET_SETTINGS.caRootKeyPassword))!;
const gone = (secret: string) => assert.rejects(keys.readSecret(secret), KeyManagerError, `${secret} is deleted`);

describe('rotation by replacement', () => {
  it('stores every secret anew, points its use at it and deletes the old one', async () => {
    assert.deepEqual(await rotateByReplacement(store, keys), { kind: 'local', rewrapped: 1, already_rewrapped: 0 });
    assert.notEqual(await current(), ref);
    assert.deepEqual(await keys.readSecret(await current()), value);
    await gone(ref);
    assert.deepEqual(await store.secrets.listReplacements(), []);
  });

  it('finishes a replacement a crash left before the use moved', async () => {
    const newRef = await keys.storeSecret('x', { project: 'admin' }, value);
    await store.secrets.recordReplacement(ref, newRef);
    assert.equal(await finishSecretReplacements(store, keys), 1);
    assert.equal(await current(), newRef);
    await gone(ref);
    assert.deepEqual(await store.secrets.listReplacements(), []);
  });

  it('finishes a replacement a crash left after the use moved, keeping the new secret', async () => {
    const newRef = await keys.storeSecret('x', { project: 'admin' }, value);
    await store.secrets.recordReplacement(ref, newRef);
    assert.equal(await store.secrets.replaceRef(ref, newRef), 1);
    await finishSecretReplacements(store, keys);
    assert.equal(await current(), newRef);
    assert.deepEqual(await keys.readSecret(newRef), value);
    await gone(ref);
  });

  it('deletes both copies when what used the secret was deleted meanwhile', async () => {
    const orphan = await keys.createSecret();
    const newRef = await keys.storeSecret('x', { project: 'admin' }, await keys.readSecret(orphan));
    await store.secrets.recordReplacement(orphan, newRef);
    await finishSecretReplacements(store, keys);
    await gone(orphan);
    await gone(newRef);
    assert.equal(await current(), ref, 'other uses are untouched');
  });
});
