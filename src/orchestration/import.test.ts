import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { StateConflictError } from '../errors.js';
import { exportVtpm } from './export.js';
import { importVtpm } from './import.js';
import { ekCertificates } from './inspect.js';
import { startVtpm } from './start.js';
import { stopVtpm } from './stop.js';
import { alice, openTestControlPlane, type TestControlPlane } from './testing/control-plane-harness.js';
import { generations, newest, row, stoppedVtpm } from './testing/fixtures.js';

let t: TestControlPlane;
beforeEach(async () => {
  t = await openTestControlPlane();
});
afterEach(() => t.close());

const passphrase = 'correct horse battery staple';

/** A stopped UEFI vTPM with a second TPM generation, and its bundle of every generation. */
async function exported(): Promise<{ source: string; bundle: Buffer }> {
  const source = await stoppedVtpm(t, { uefi: true });
  await startVtpm(t.cp, source, alice);
  await t.local.guestWrites(source, Buffer.from('written before the export'));
  await stopVtpm(t.cp, source, alice);
  await t.settle();
  return { source, bundle: await exportVtpm(t.cp, source, { passphrase, generations: 'all' }, alice) };
}

/** The vault's commit fails on its `nth` call from now. */
function failVaultCommit(nth: number): void {
  const commit = t.cp.vault.commit.bind(t.cp.vault);
  let calls = 0;
  t.cp.vault.commit = async (...args) => {
    calls += 1;
    if (calls === nth) throw new Error('vault unavailable (injected)');
    return commit(...args);
  };
}

describe('import', () => {
  it('recreates the vTPM under another VM UUID: its generations, its secret, its EK certificates', async () => {
    const { source, bundle } = await exported();
    const vm = randomUUID();
    const imported = await importVtpm(t.cp, { bundle, passphrase, vm, original: 'clone' }, alice);
    assert.equal(imported.status, 'stopped');
    assert.equal(imported.firmware, 'uefi');
    assert.deepEqual(await generations(t, vm), [
      ['nvram', 1, 'import'],
      ['tpm', 2, 'import'],
      ['tpm', 1, 'import'],
    ]);
    assert.deepEqual((await newest(t, vm)).data, (await newest(t, source)).data);
    assert.deepEqual((await newest(t, vm, 'nvram')).data, (await newest(t, source, 'nvram')).data);
    assert.deepEqual(await ekCertificates(t.cp, vm, alice), await ekCertificates(t.cp, source, alice));
    const record = await row(t, vm);
    assert.notEqual(record.secret_ref, (await row(t, source)).secret_ref, 'the secret is stored anew');
    assert.ok(await t.keys.holds(record.secret_ref));
  });

  it('when the vault cannot commit a generation: no row, no generations, no secret', async () => {
    const { source, bundle } = await exported();
    const sourceRef = (await row(t, source)).secret_ref;
    const vm = randomUUID();
    failVaultCommit(2);
    await assert.rejects(importVtpm(t.cp, { bundle, passphrase, vm, original: 'clone' }, alice), /vault unavailable/);
    assert.equal(await t.cp.store.vtpms.get(vm), undefined);
    assert.deepEqual(await t.cp.vault.history(vm), []);
    assert.deepEqual(await t.keys.held(), [sourceRef]);
    assert.deepEqual(
      (await t.cp.store.secrets.listUses()).map((use) => use.ref),
      [sourceRef],
    );
  });

  it('when the undo cannot reach the key manager either: the vTPM is left deleting', async () => {
    const { bundle } = await exported();
    const vm = randomUUID();
    failVaultCommit(1);
    t.keys.failNext('deleteSecret');
    await assert.rejects(importVtpm(t.cp, { bundle, passphrase, vm, original: 'clone' }, alice), /vault unavailable/);
    assert.equal((await row(t, vm)).status, 'deleting');
  });

  it('when the key manager cannot store the secret: no row', async () => {
    const { source, bundle } = await exported();
    const vm = randomUUID();
    t.keys.failNext('storeSecret');
    await assert.rejects(
      importVtpm(t.cp, { bundle, passphrase, vm, original: 'clone' }, alice),
      /key manager unavailable/,
    );
    assert.equal(await t.cp.store.vtpms.get(vm), undefined);
    assert.deepEqual(await t.keys.held(), [(await row(t, source)).secret_ref]);
  });

  it('refuses a bundle of a VM that has a vTPM here, and changes nothing', async () => {
    const { source, bundle } = await exported();
    const before = await row(t, source);
    const history = await t.cp.vault.history(source);
    const made = t.keys.made.length;
    await assert.rejects(importVtpm(t.cp, { bundle, passphrase }, alice), StateConflictError);
    assert.deepEqual(await row(t, source), before);
    assert.deepEqual(await t.cp.vault.history(source), history);
    assert.equal(t.keys.made.length, made, 'no secret was stored');
    assert.equal((await t.cp.store.vtpms.list()).length, 1);
  });

  it('refuses a bundle whose VM still has its vTPM here under another VM, naming --move and --clone', async () => {
    const { bundle } = await exported();
    const vm = randomUUID();
    const made = t.keys.made.length;
    await assert.rejects(importVtpm(t.cp, { bundle, passphrase, vm }, alice), {
      code: 'state_conflict',
      message: /would give two VMs one TPM identity \(the same EK\)\. Pass --move .* or --clone/,
    });
    assert.equal(await t.cp.store.vtpms.get(vm), undefined);
    assert.equal(t.keys.made.length, made, 'no secret was stored');
  });

  it('--move imports under the new VM, then crypto-erases the original', async () => {
    const { source, bundle } = await exported();
    const sourceRef = (await row(t, source)).secret_ref;
    const sourceNewest = (await newest(t, source)).data;
    const vm = randomUUID();
    await importVtpm(t.cp, { bundle, passphrase, vm, original: 'move' }, alice);
    assert.deepEqual((await newest(t, vm)).data, sourceNewest);
    assert.equal(await t.cp.store.vtpms.get(source), undefined);
    assert.equal(await t.keys.holds(sourceRef), false, "the original's secret is gone");
    assert.deepEqual(await t.cp.vault.history(source), []);
  });

  it('--move of a running original is refused, and nothing is imported', async () => {
    const { source, bundle } = await exported();
    await startVtpm(t.cp, source, alice);
    const vm = randomUUID();
    await assert.rejects(importVtpm(t.cp, { bundle, passphrase, vm, original: 'move' }, alice), /stop it before/);
    assert.equal(await t.cp.store.vtpms.get(vm), undefined);
    assert.equal((await row(t, source)).status, 'running');
  });

  it('refuses a wrong passphrase before anything is made', async () => {
    const { bundle } = await exported();
    const made = t.keys.made.length;
    await assert.rejects(importVtpm(t.cp, { bundle, passphrase: 'wrong', vm: randomUUID() }, alice));
    assert.equal(t.keys.made.length, made);
    assert.equal((await t.cp.store.vtpms.list()).length, 1);
  });
});
