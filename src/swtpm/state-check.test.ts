/** stateLoads against a real swtpm: a whole state loads, a truncated or foreign one does not. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ioctl, shutDown, startSwtpm } from './throwaway-swtpm.js';
import { stateLoads } from './state-check.js';
import { STATE_CIPHER, stateKeyMaterial } from './state-key.js';
import { stateFileName } from './state-file.js';

const spec = { version: '2.0', model: 'tpm-tis' } as const;
const stateKey = randomBytes(32);
let scratchRoot: string;
let state: Buffer;

before(async () => {
  scratchRoot = await mkdtemp(join(tmpdir(), 'vtpm-state-check-'));
  // A fresh TPM: swtpm writes its first permanent state, under the key, when it is initialised.
  const dir = join(scratchRoot, 'made');
  await mkdir(dir, { mode: 0o700 });
  const key = ['--key', `fd=3,mode=${STATE_CIPHER},format=hex`];
  const swtpm = await startSwtpm(spec, scratchRoot, 'maker', ['--tpmstate', `dir=${dir},mode=0600`, ...key], {
    3: stateKeyMaterial(stateKey),
  });
  await ioctl(swtpm, '-i');
  await shutDown(swtpm);
  state = await readFile(join(dir, stateFileName(spec)));
});
after(() => rm(scratchRoot, { recursive: true, force: true }));

describe('stateLoads', () => {
  it('a whole state under its key loads', async () => {
    assert.equal(await stateLoads({ spec, state, stateKey, scratchRoot }), true);
  });

  it('a truncated state, a damaged one, or one under another key does not', async () => {
    const truncated = state.subarray(0, Math.floor(state.length / 2));
    const damaged = Buffer.from(state);
    damaged[damaged.length - 10]! ^= 0xff;
    for (const candidate of [truncated, damaged]) {
      assert.equal(await stateLoads({ spec, state: candidate, stateKey, scratchRoot }), false);
    }
    assert.equal(await stateLoads({ spec, state, stateKey: randomBytes(32), scratchRoot }), false);
  });
});
