import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { before, describe, it } from 'node:test';
import { InvalidArgumentError, InvalidBundleError } from '../errors.js';
import { readBundle, writeBundle, type BundlePayload } from './bundle.js';

const passphrase = 'correct horse battery staple';
const payload: BundlePayload = {
  vm: '6f1c2a0e-1111-4222-8333-444455556666',
  project: 'admin',
  version: '2.0',
  model: 'tpm-crb',
  firmware: 'uefi',
  secure_boot: true,
  secret: randomBytes(32),
  ek_certificates: [{ key_type: 'rsa2048', der: randomBytes(900) }],
  generations: [
    { kind: 'tpm', generation: 4, reason: 'sync', created_at: '2026-11-23T00:00:00.000Z', data: randomBytes(6000) },
    { kind: 'nvram', generation: 2, reason: 'stop', created_at: '2026-11-23T00:00:01.000Z', data: randomBytes(4000) },
  ],
};

describe('export bundles', () => {
  let bundle: Buffer;
  before(async () => {
    bundle = await writeBundle(payload, passphrase);
  });

  it('round-trip with the passphrase and hide their content', async () => {
    assert.deepEqual(await readBundle(bundle, passphrase), payload);
    for (const secret of [
      payload.secret,
      payload.generations[0]!.data.subarray(0, 32),
      payload.ek_certificates[0]!.der.subarray(0, 32),
    ]) {
      assert.ok(!bundle.includes(secret));
      assert.ok(!bundle.includes(Buffer.from(secret.toString('base64').slice(0, 24))));
    }
  });
  it('refuse a wrong passphrase', async () => {
    await assert.rejects(
      readBundle(bundle, 'not the passphrase!'),
      (e: unknown) => e instanceof InvalidBundleError && /passphrase is wrong/.test(e.message),
    );
  });
  it('refuse a truncated file', async () => {
    for (const length of [3, 20, bundle.length - 1, bundle.length - 100]) {
      await assert.rejects(readBundle(bundle.subarray(0, length), passphrase), InvalidBundleError);
    }
  });
  it('refuse any flipped byte, in the header or the payload', async () => {
    for (const at of [0, 9, 14, 40, bundle.length - 1, Math.floor(bundle.length / 2)]) {
      const flipped = Buffer.from(bundle);
      flipped[at]! ^= 0x02;
      await assert.rejects(readBundle(flipped, passphrase), InvalidBundleError, `flip at ${at}`);
    }
  });
  it("are the caller's input: refusing one is a 4xx, not the service's failure", () => {
    assert.equal(new InvalidBundleError('x').status, 422);
  });
  it("refuse KDF parameters other than the format's before deriving anything", async () => {
    const headerLength = bundle.readUInt32BE(8);
    const header = JSON.parse(bundle.subarray(12, 12 + headerLength).toString());
    for (const costly of [{ n: 2 ** 20 }, { r: 4096 }, { p: 1000 }, { n: 3 }, { salt: 7 }, null]) {
      const text = Buffer.from(JSON.stringify(costly && { ...header, ...costly }));
      const length = Buffer.alloc(4);
      length.writeUInt32BE(text.length);
      const altered = Buffer.concat([bundle.subarray(0, 8), length, text, bundle.subarray(12 + headerLength)]);
      await assert.rejects(
        readBundle(altered, passphrase),
        (e: unknown) => e instanceof InvalidBundleError && /header is not one this version understands/.test(e.message),
        JSON.stringify(costly),
      );
    }
  });
  it('refuse an authenticated bundle that does not describe a vTPM', async () => {
    const tpm = payload.generations[0]!;
    for (const content of [
      { version: '9.9' },
      { model: '../../tpm' },
      { secret: randomBytes(16) },
      { generations: [{ ...tpm, kind: '../evil' }] },
      { generations: [{ ...tpm, generation: -1 }] },
      { generations: payload.generations.filter((g) => g.kind !== 'tpm') },
    ]) {
      const sealed = await writeBundle({ ...payload, ...content } as BundlePayload, passphrase);
      await assert.rejects(
        readBundle(sealed, passphrase),
        (e: unknown) => e instanceof InvalidBundleError,
        JSON.stringify(content).slice(0, 80),
      );
    }
  });
  it('refuse a short passphrase when writing', async () => {
    await assert.rejects(
      writeBundle(payload, 'short'),
      (e: unknown) => e instanceof InvalidArgumentError && /passphrase: expected at least 12/.test(e.message),
    );
  });
});
