import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { InvalidArgumentError } from '../../errors.js';
import { PIN_ENVIRONMENT } from '../settings.js';
import { readPin } from './pin.js';

const dir = await mkdtemp(join(tmpdir(), 'vtpm-pin-test-'));
after(() => rm(dir, { recursive: true, force: true }));

describe('the PKCS#11 PIN', () => {
  it('is read from an owner-only file, without its trailing newline', async () => {
    await writeFile(join(dir, 'ok'), '123456\n', { mode: 0o600 });
    assert.equal(await readPin(join(dir, 'ok')), '123456');
  });

  it('is refused from a file others may read, naming the fix', async () => {
    await writeFile(join(dir, 'open'), '123456', { mode: 0o644 });
    await assert.rejects(
      readPin(join(dir, 'open')),
      (error: unknown) => error instanceof InvalidArgumentError && /chmod 600 .*open\); it is 644/.test(error.message),
    );
  });

  it('falls back to the environment, and says where it looked when neither has it', async () => {
    const saved = process.env[PIN_ENVIRONMENT];
    try {
      process.env[PIN_ENVIRONMENT] = '654321';
      assert.equal(await readPin(undefined), '654321');
      // Gone once read, so that no child the service spawns inherits it.
      assert.equal(process.env[PIN_ENVIRONMENT], undefined);
      await assert.rejects(readPin(undefined), /--pkcs11-pin-file: expected .* \(or in VTPM_PKCS11_PIN\)/);
    } finally {
      if (saved === undefined) delete process.env[PIN_ENVIRONMENT];
      else process.env[PIN_ENVIRONMENT] = saved;
    }
  });
});
