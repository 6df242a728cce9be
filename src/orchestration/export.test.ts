import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { readBundle } from '../vault/bundle.js';
import { exportVtpm } from './export.js';
import { startVtpm } from './start.js';
import { alice, openTestControlPlane, type TestControlPlane } from './testing/control-plane-harness.js';
import { stoppedVtpm } from './testing/fixtures.js';

let t: TestControlPlane;
beforeEach(async () => {
  t = await openTestControlPlane();
});
afterEach(() => t.close());

const passphrase = 'correct horse battery staple';

describe('export', () => {
  it('seals the newest generations of each kind, oldest first, with the EK certificates', async () => {
    const vm = await stoppedVtpm(t, { uefi: true });
    await startVtpm(t.cp, vm, alice);
    await t.local.guestWrites(vm, Buffer.from('second'));
    await t.local.guestWrites(vm, Buffer.from('third'));
    const payload = await readBundle(await exportVtpm(t.cp, vm, { passphrase, generations: 2 }, alice), passphrase);
    assert.equal(payload.vm, vm);
    assert.deepEqual(
      payload.generations.map((g) => [g.kind, g.generation, g.data.toString()]),
      [
        ['tpm', 2, 'second'],
        ['tpm', 3, 'third'],
        ['nvram', 1, 'variables secure-boot=false'],
      ],
    );
    assert.deepEqual(
      payload.ek_certificates.map((c) => c.der.toString()),
      [`ek-of-${vm}`],
    );
  });

  it('refuses a vTPM left deleting or creating', async () => {
    const vm = await stoppedVtpm(t);
    for (const status of ['deleting', 'creating'] as const) {
      await t.cp.store.vtpms.update(vm, { status });
      await assert.rejects(exportVtpm(t.cp, vm, { passphrase, generations: 'all' }, alice), new RegExp(status));
    }
  });

  it('when the key manager cannot read the secret: refused', async () => {
    const vm = await stoppedVtpm(t);
    t.keys.failNext('readSecret');
    await assert.rejects(exportVtpm(t.cp, vm, { passphrase, generations: 'all' }, alice), /key manager unavailable/);
  });

  it('tells a caller who may not export so before judging its passphrase, then judges it', async () => {
    const vm = await stoppedVtpm(t);
    const admin = { name: 'root', project: 'ops', roles: ['admin' as const] };
    await assert.rejects(exportVtpm(t.cp, vm, { passphrase: 'short', generations: 1 }, admin), { code: 'forbidden' });
    await assert.rejects(exportVtpm(t.cp, vm, { passphrase: 'short', generations: 1 }, alice), {
      code: 'invalid_argument',
      message: /^passphrase: expected at least 12 characters/,
    });
  });
});
