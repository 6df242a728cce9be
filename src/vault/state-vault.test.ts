import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Sqlite from 'better-sqlite3';
import { IntegrityError, RollbackError } from '../errors.js';
import { Store } from '../store/index.js';
import { sqliteDialect } from '../store/sqlite/sqlite-dialect.js';
import { StateVault, digestOf, vaultKeyFrom } from './state-vault.js';

let dir: string;
let store: Store;
let raw: Sqlite.Database;
let vault: StateVault;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vault-test-'));
  store = await Store.open(sqliteDialect(join(dir, 'db.sqlite')));
  raw = new Sqlite(join(dir, 'db.sqlite'));
  vault = new StateVault(store, { newest: 5, days: 0 });
});

after(async () => {
  raw.close();
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

const state = (n: number) => Buffer.concat([Buffer.from(`state-${n}-`), randomBytes(64)]);

async function vmWith(generations: number): Promise<{ vm: string; key: Buffer; states: Buffer[] }> {
  const vm = randomUUID();
  const key = vaultKeyFrom(randomBytes(32));
  const states: Buffer[] = [];
  for (let n = 1; n <= generations; n += 1) {
    states.push(state(n));
    assert.equal(await vault.commit(vm, 'tpm', key, states.at(-1)!, n === 1 ? 'create' : 'sync'), n);
  }
  return { vm, key, states };
}

function rowColumn(vm: string, generation: number, column: 'ciphertext' | 'wrapped_key'): Buffer {
  return (
    raw
      .prepare(`SELECT ${column} AS value FROM state_generations WHERE vm = ? AND kind = 'tpm' AND generation = ?`)
      .get(vm, generation) as { value: Buffer }
  ).value;
}

function setRowColumn(vm: string, generation: number, column: string, value: Buffer | string): void {
  raw
    .prepare(`UPDATE state_generations SET ${column} = ? WHERE vm = ? AND kind = 'tpm' AND generation = ?`)
    .run(value, vm, generation);
}

describe('StateVault', () => {
  it('numbers generations, returns the newest, and keeps plaintext out of the database', async () => {
    const { vm, key, states } = await vmWith(3);
    const newest = await vault.newest(vm, 'tpm', key);
    assert.equal(newest?.generation, 3);
    assert.ok(newest?.data.equals(states[2]!));
    assert.ok(!rowColumn(vm, 3, 'ciphertext').includes(states[2]!.subarray(0, 40)));
    assert.deepEqual(
      (await vault.history(vm)).map((g) => [g.generation, g.reason]),
      [
        [3, 'sync'],
        [2, 'sync'],
        [1, 'create'],
      ],
    );
  });

  it('does not commit a sync that changes nothing; a stop that changes nothing marks the head the last', async () => {
    const { vm, key, states } = await vmWith(2);
    assert.equal(await vault.commit(vm, 'tpm', key, states[1]!, 'sync'), undefined);
    assert.equal(await vault.commit(vm, 'tpm', key, states[1]!, 'stop'), undefined);
    const [head] = await vault.history(vm);
    assert.deepEqual([head?.generation, head?.reason], [2, 'stop']);
    assert.equal(await vault.commit(vm, 'tpm', key, states[0]!, 'restore'), 3);
    assert.equal(await vault.commit(vm, 'tpm', key, states[0]!, 'stop'), undefined);
    assert.equal((await vault.history(vm))[0]?.reason, 'restore', 'only a sync generation is marked');
  });

  it('keeps only the newest generations of the retention', async () => {
    const { vm } = await vmWith(8);
    assert.deepEqual(
      (await vault.history(vm)).map((g) => g.generation),
      [8, 7, 6, 5, 4],
    );
  });

  it('refuses a flipped byte, naming the VM and the generation', async () => {
    const { vm, key } = await vmWith(3);
    const tampered = Buffer.from(rowColumn(vm, 3, 'ciphertext'));
    tampered[tampered.length - 5]! ^= 0x01;
    setRowColumn(vm, 3, 'ciphertext', tampered);
    await assert.rejects(
      vault.newest(vm, 'tpm', key),
      (error: unknown) =>
        error instanceof IntegrityError && error.message.includes(vm) && error.message.includes('generation 3'),
    );
    // The generation before it is intact and can be restored as the newest.
    const good = await vault.read(vm, 'tpm', 2, key);
    assert.equal(await vault.commit(vm, 'tpm', key, good.data, 'restore'), 4);
    assert.ok((await vault.newest(vm, 'tpm', key))?.data.equals(good.data));
  });

  it('refuses a generation swapped in from another VM', async () => {
    const a = await vmWith(2);
    const b = await vmWith(2);
    setRowColumn(a.vm, 2, 'ciphertext', rowColumn(b.vm, 2, 'ciphertext'));
    setRowColumn(a.vm, 2, 'wrapped_key', rowColumn(b.vm, 2, 'wrapped_key'));
    await assert.rejects(vault.newest(a.vm, 'tpm', a.key), IntegrityError);
    await assert.rejects(vault.newest(a.vm, 'tpm', b.key), IntegrityError);
  });

  it('refuses an older generation replayed in place of the newest', async () => {
    const { vm, key, states } = await vmWith(3);
    for (const column of ['ciphertext', 'wrapped_key'] as const) setRowColumn(vm, 3, column, rowColumn(vm, 2, column));
    setRowColumn(vm, 3, 'digest', digestOf(states[1]!));
    await assert.rejects(vault.newest(vm, 'tpm', key), IntegrityError);
  });

  it('detects a rollback: the newest acknowledged generation is gone', async () => {
    const { vm, key } = await vmWith(4);
    raw.prepare('DELETE FROM state_generations WHERE vm = ? AND generation >= 3').run(vm);
    await assert.rejects(
      vault.newest(vm, 'tpm', key),
      (error: unknown) => error instanceof RollbackError && /generation 4 was acknowledged/.test(error.message),
    );
  });

  it('refuses a wrong key, and a generation whose recorded predecessor was changed', async () => {
    const { vm, key } = await vmWith(3);
    await assert.rejects(vault.read(vm, 'tpm', 2, vaultKeyFrom(randomBytes(32))), IntegrityError);
    setRowColumn(vm, 3, 'previous_digest', '0'.repeat(64));
    await assert.rejects(
      vault.read(vm, 'tpm', 3, key),
      (error: unknown) => error instanceof IntegrityError && /generation 3/.test(error.message),
    );
  });

  it('a damaged old generation does not block the generations after it', async () => {
    const { vm, key, states } = await vmWith(3);
    setRowColumn(vm, 2, 'ciphertext', Buffer.alloc(80, 1));
    setRowColumn(vm, 2, 'digest', '0'.repeat(64));
    assert.ok((await vault.newest(vm, 'tpm', key))?.data.equals(states[2]!));
    await assert.rejects(vault.read(vm, 'tpm', 2, key), IntegrityError);
  });
});
