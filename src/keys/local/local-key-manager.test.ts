import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { link, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { open, seal } from '../aead.js';
import { LocalKeyManager } from './local-key-manager.js';
import { rotateAmidOperations } from '../testing/rotation-amid-operations.js';

const roots: string[] = [];
after(async () => Promise.all(roots.map((root) => rm(root, { recursive: true, force: true }))));

async function withSecrets(count: number): Promise<{ dataDir: string; refs: string[]; values: Buffer[] }> {
  const dataDir = await mkdtemp(join(tmpdir(), 'vtpm-keys-test-'));
  roots.push(dataDir);
  const keys = await LocalKeyManager.open(dataDir);
  const refs: string[] = [];
  for (let i = 0; i < count; i += 1) refs.push(await keys.createSecret());
  const values = await Promise.all(refs.map((ref) => keys.readSecret(ref)));
  await keys.close();
  return { dataDir, refs, values };
}

const masterOf = (dataDir: string) => readFile(join(dataDir, 'keys', 'master.key'));

describe('local key manager rotation', () => {
  it('re-wraps every secret under a new master key, values unchanged, and destroys the old key', async () => {
    const { dataDir, refs, values } = await withSecrets(3);
    const before = await masterOf(dataDir);
    const sealedBefore = await readFile(join(dataDir, 'keys', 'secrets', refs[0]!.slice('local:'.length)));
    const keys = await LocalKeyManager.open(dataDir);
    assert.deepEqual(await keys.rotate(), { kind: 'local', rewrapped: 3, already_rewrapped: 0 });
    for (const [i, ref] of refs.entries()) assert.deepEqual(await keys.readSecret(ref), values[i]);
    await keys.close();

    const after = await masterOf(dataDir);
    assert.notDeepEqual(after, before);
    assert.deepEqual((await readdir(join(dataDir, 'keys'))).sort(), ['master.key', 'secrets']);
    assert.throws(
      () => open(after, sealedBefore, refs[0]!, 'x'),
      'what was sealed under the old key does not open under the new one',
    );
    const reopened = await LocalKeyManager.open(dataDir);
    assert.deepEqual(await reopened.readSecret(refs[1]!), values[1]);
    await reopened.close();
  });

  it('finishes an interrupted rotation when it opens again', async () => {
    const { dataDir, refs, values } = await withSecrets(3);
    const old = await masterOf(dataDir);
    // As a crash would leave it: the next key saved, one secret already re-wrapped under it, the others not.
    const next = randomBytes(32);
    await writeFile(join(dataDir, 'keys', 'master.next.key'), next, { mode: 0o600 });
    const first = join(dataDir, 'keys', 'secrets', refs[0]!.slice('local:'.length));
    await writeFile(first, seal(next, open(old, await readFile(first), refs[0]!, 'x'), refs[0]!));

    const keys = await LocalKeyManager.open(dataDir);
    for (const [i, ref] of refs.entries()) assert.deepEqual(await keys.readSecret(ref), values[i]);
    await keys.close();
    assert.deepEqual(await masterOf(dataDir), next, 'the next key became the master key');
    assert.ok(!(await readdir(join(dataDir, 'keys'))).includes('master.next.key'));
    for (const ref of refs) {
      const sealed = await readFile(join(dataDir, 'keys', 'secrets', ref.slice('local:'.length)));
      assert.doesNotThrow(() => open(next, sealed, ref, 'x'), `${ref} is under the new key`);
    }
  });

  it('finishes a promotion interrupted before the rename: the old key kept a second name', async () => {
    const { dataDir, refs, values } = await withSecrets(2);
    const keysDir = join(dataDir, 'keys');
    const next = randomBytes(32);
    await writeFile(join(keysDir, 'master.next.key'), next, { mode: 0o600 });
    await link(join(keysDir, 'master.key'), join(keysDir, 'master.retired.key'));

    const keys = await LocalKeyManager.open(dataDir);
    for (const [i, ref] of refs.entries()) assert.deepEqual(await keys.readSecret(ref), values[i]);
    await keys.close();
    assert.deepEqual(await masterOf(dataDir), next);
    assert.deepEqual((await readdir(keysDir)).sort(), ['master.key', 'secrets']);
  });

  it('destroys an old master key left after the rename, and keeps the current one', async () => {
    const { dataDir, refs, values } = await withSecrets(2);
    const keysDir = join(dataDir, 'keys');
    const current = await masterOf(dataDir);
    await writeFile(join(keysDir, 'master.retired.key'), randomBytes(32), { mode: 0o600 });

    const keys = await LocalKeyManager.open(dataDir);
    for (const [i, ref] of refs.entries()) assert.deepEqual(await keys.readSecret(ref), values[i]);
    await keys.close();
    assert.deepEqual(await masterOf(dataDir), current);
    assert.deepEqual((await readdir(keysDir)).sort(), ['master.key', 'secrets']);
  });
});

describe('local key manager: a rotation among other operations', () => {
  // Three rounds, the rotation starting after a different number of stores each time.
  for (const at of [5, 15, 30])
    it(`waits for stores, reads and deletes under way, and what starts after it waits for it (at ${at})`, async () => {
      const { dataDir, refs: existing, values: existingValues } = await withSecrets(6);
      await rotateAmidOperations(() => LocalKeyManager.open(dataDir), existing, existingValues, at);
    });
});

describe('local key manager backup', () => {
  it('gives the master key and every secret file, and nothing stores, reads or rotates until it is done', async () => {
    const { dataDir, refs } = await withSecrets(2);
    const keys = await LocalKeyManager.open(dataDir);
    const events: string[] = [];
    let release = () => {};
    const held = new Promise<void>((resolve) => (release = resolve));
    const backup = keys.backup(async (files) => {
      events.push('backup');
      assert.deepEqual(
        files.map((f) => f.path),
        ['keys/master.key', ...refs.map((ref) => `keys/secrets/${ref.slice('local:'.length)}`).sort()],
      );
      assert.deepEqual(files[0]!.data, await masterOf(dataDir));
      await held;
      return files[0]!.data;
    });
    const rotation = keys.rotate().then(() => events.push('rotate'));
    const read = keys.readSecret(refs[0]!).then(() => events.push('read'));
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(events, ['backup'], 'the rotation and the read wait for the backup');
    release();
    const master = await backup;
    await Promise.all([rotation, read]);
    assert.equal(events[0], 'backup');
    assert.ok(
      master.every((byte) => byte === 0),
      "the backup's copy of the master key is zeroed once it is done",
    );
    await keys.close();
  });
});
