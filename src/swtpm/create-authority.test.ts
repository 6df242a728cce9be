import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { keyIterations, rewrappedKey } from './create-authority.js';
import { runProgram } from './run-program.js';

const PASSWORD = 'a-test-password-of-the-ca';

/** A key as certtool encrypts one for swtpm_localca (its default PKCS #8 PBKDF2 rounds). */
async function certtoolKey(): Promise<string> {
  const dir = await mkdtemp('/dev/shm/vtpm-ca-key-test-');
  try {
    const file = join(dir, 'key.pem');
    await runProgram('certtool', ['--generate-privkey', '--pkcs8', '--password', PASSWORD, '--outfile', file]);
    return await readFile(file, 'utf8');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const publicOf = (pem: string) =>
  createPublicKey(createPrivateKey({ key: pem, format: 'pem', passphrase: PASSWORD })).export({
    type: 'spki',
    format: 'der',
  });

describe("the CA's signing key, written again with fewer key-stretching rounds", () => {
  it("certtool's key: the same key under the same password, at 2048 rounds", async () => {
    const original = await certtoolKey();
    assert.ok((keyIterations(original) ?? 0) > 100_000, `certtool's rounds: ${keyIterations(original)}`);
    const rewrapped = rewrappedKey(original, PASSWORD);
    assert.ok(rewrapped);
    assert.equal(keyIterations(rewrapped), 2048);
    assert.deepEqual(publicOf(rewrapped), publicOf(original));
    assert.equal(rewrappedKey(rewrapped, PASSWORD), undefined);
  });

  it('a key of another layout (not encrypted PKCS #8) is left alone', () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    assert.equal(rewrappedKey(privateKey.export({ type: 'sec1', format: 'pem' }).toString(), PASSWORD), undefined);
  });

  it('a wrong password is an error, not a key written under another one', async () => {
    const original = await certtoolKey();
    assert.throws(() => rewrappedKey(original, 'not the password of this key'));
  });
});
