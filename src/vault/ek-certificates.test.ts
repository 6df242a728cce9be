import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { IntegrityError } from '../errors.js';
import { openEkCertificates, sealEkCertificates, toPem } from './ek-certificates.js';

const vm = '6f1c2a0e-1111-4222-8333-444455556666';
const certificates = [
  { keyType: 'rsa2048', der: randomBytes(900) },
  { keyType: 'secp384r1', der: randomBytes(700) },
];

describe('EK certificate sealing', () => {
  it('round-trips and hides the content', () => {
    const secret = randomBytes(32);
    const sealed = sealEkCertificates(secret, vm, certificates);
    assert.ok(!sealed.includes(certificates[0]!.der.subarray(0, 32)));
    assert.ok(!sealed.includes(Buffer.from(certificates[0]!.der.toString('base64').slice(0, 40))));
    assert.deepEqual(openEkCertificates(secret, vm, sealed), certificates);
  });
  it('refuses another VM, another secret, or a flipped byte', () => {
    const secret = randomBytes(32);
    const sealed = sealEkCertificates(secret, vm, certificates);
    assert.throws(() => openEkCertificates(secret, vm.replace('6f1c', '0000'), sealed), IntegrityError);
    assert.throws(() => openEkCertificates(randomBytes(32), vm, sealed), IntegrityError);
    const flipped = Buffer.from(sealed);
    flipped[flipped.length - 1]! ^= 1;
    assert.throws(() => openEkCertificates(secret, vm, flipped), IntegrityError);
    assert.throws(() => openEkCertificates(secret, vm, sealed.subarray(0, 10)), /truncated/);
  });
  it('writes PEM with 64-character lines', () => {
    const pem = toPem(Buffer.alloc(100, 7));
    assert.match(pem, /^-----BEGIN CERTIFICATE-----\n/);
    assert.ok(pem.split('\n').every((line) => line.length <= 64));
  });
});
