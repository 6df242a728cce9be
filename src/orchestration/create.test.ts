import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { toPem } from '../vault/ek-certificates.js';
import { createVtpm } from './create.js';
import { ekCertificates } from './inspect.js';
import { alice, openTestControlPlane, type TestControlPlane } from './testing/control-plane-harness.js';

let t: TestControlPlane;
beforeEach(async () => {
  t = await openTestControlPlane();
});
afterEach(() => t.close());

describe('create', () => {
  it('leaves a stopped vTPM whose first generation is the manufactured state', async () => {
    const vm = randomUUID();
    const created = await createVtpm(t.cp, { vm, version: '2.0' }, alice);
    assert.equal(created.status, 'stopped');
    const history = await t.cp.vault.history(vm);
    assert.deepEqual(
      history.map((g) => [g.kind, g.generation, g.reason]),
      [['tpm', 1, 'create']],
    );
  });

  it('when manufacturing fails: the secret is erased and no row is left', async () => {
    const vm = randomUUID();
    t.local.failNext('manufacture');
    await assert.rejects(createVtpm(t.cp, { vm, version: '2.0' }, alice), /manufacture failed/);
    assert.equal(await t.cp.store.vtpms.get(vm), undefined);
    assert.deepEqual(await t.cp.store.secrets.listUses(), []);
  });

  it("when a UEFI guest's variable store cannot be committed: no generation is left in the vault", async () => {
    const vm = randomUUID();
    const commit = t.cp.vault.commit.bind(t.cp.vault);
    t.cp.vault.commit = async (...args) => {
      if (args[1] === 'nvram') throw new Error('vault unavailable (injected)');
      return commit(...args);
    };
    await assert.rejects(createVtpm(t.cp, { vm, version: '2.0', firmware: 'uefi' }, alice), /vault unavailable/);
    assert.equal(await t.cp.store.vtpms.get(vm), undefined);
    assert.deepEqual(await t.cp.vault.history(vm), []);
    assert.deepEqual(await t.keys.held(), []);
  });

  it('when the undo cannot reach the key manager: left deleting, the first failure the one reported', async () => {
    const vm = randomUUID();
    t.local.failNext('manufacture');
    t.keys.failNext('deleteSecret');
    await assert.rejects(createVtpm(t.cp, { vm, version: '2.0' }, alice), /manufacture failed/);
    assert.equal((await t.cp.store.vtpms.get(vm))?.status, 'deleting');
  });
});

describe('create from the provisioning pool', () => {
  let pooled: TestControlPlane;
  beforeEach(async () => {
    pooled = await openTestControlPlane({ poolSize: 1 });
  });
  afterEach(() => pooled.close());

  it("takes a pooled TPM and commits it with the certificates issued for the VM, not the pool entry's", async () => {
    const vm = randomUUID();
    await createVtpm(pooled.cp, { vm, version: '2.0' }, alice);
    assert.ok(pooled.local.calls.includes(`issueEkCertificates ${vm}`));
    const [certificate] = await ekCertificates(pooled.cp, vm, alice);
    assert.equal(certificate?.pem, toPem(Buffer.from(`ek-of-${vm}`)));
    const [generation] = await pooled.cp.vault.history(vm);
    assert.equal(generation?.reason, 'create');
  });

  it('when issuing fails after the claim: no row, no generation, the pooled secret erased', async () => {
    const vm = randomUUID();
    pooled.local.failNext('issueEkCertificates');
    await assert.rejects(createVtpm(pooled.cp, { vm, version: '2.0' }, alice), /issueEkCertificates failed/);
    assert.equal(await pooled.cp.store.vtpms.get(vm), undefined);
    assert.deepEqual(await pooled.cp.vault.history(vm), []);
    const poolSecrets = pooled.keys.made.slice(0, 1);
    assert.deepEqual(
      (await pooled.keys.held()).filter((ref) => poolSecrets.includes(ref)),
      [],
      "the claimed entry's secret",
    );
  });
});
