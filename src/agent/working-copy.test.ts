import assert from 'node:assert/strict';
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { prepareWorkingCopy, readWorkingCopy } from './working-copy.js';

let root: string;
let places: { stateDir: string; stateFile: string; nvram: string };
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'vtpm-working-copy-'));
  places = { stateDir: join(root, 'tpm', 'vm'), stateFile: 'tpm2-00.permall', nvram: join(root, 'vm.fd') };
  await mkdir(join(root, 'tpm'));
});
afterEach(() => rm(root, { recursive: true, force: true }));

describe('the working copy a launch starts from', () => {
  it('holds the state file and nothing an earlier swtpm left; a BIOS guest has no variable store', async () => {
    await prepareWorkingCopy(places, {}, Buffer.from('first'), Buffer.from('vars'));
    assert.deepEqual(await readWorkingCopy(places), { tpm: Buffer.from('first'), nvram: Buffer.from('vars') });
    await writeFile(join(places.stateDir, 'tpm2-00.volatilestate'), 'left by swtpm');

    await prepareWorkingCopy(places, {}, Buffer.from('second'), undefined);

    assert.deepEqual(await readdir(places.stateDir), ['tpm2-00.permall']);
    assert.deepEqual(await readWorkingCopy(places), { tpm: Buffer.from('second') });
    assert.equal((await lstat(places.stateDir)).mode & 0o777, 0o700);
    assert.equal((await lstat(join(places.stateDir, places.stateFile))).mode & 0o777, 0o600);
  });

  it('does not write through a link left in the state directory', async () => {
    await prepareWorkingCopy(places, {}, Buffer.from('first'), undefined);
    const outside = join(root, 'outside');
    await writeFile(outside, 'not the TPM state');
    await rm(join(places.stateDir, places.stateFile));
    await symlink(outside, join(places.stateDir, places.stateFile));

    await prepareWorkingCopy(places, {}, Buffer.from('second'), undefined);

    assert.equal(await readFile(outside, 'utf8'), 'not the TPM state');
    assert.ok((await lstat(join(places.stateDir, places.stateFile))).isFile());
    assert.deepEqual((await readWorkingCopy(places)).tpm, Buffer.from('second'));
  });
});
