/**
 * Whether a TPM state file is a complete state that swtpm loads under the
 * vTPM's key: a throwaway swtpm initialises the TPM from a copy of it (which
 * decrypts it and checks its integrity), without starting the TPM.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';
import { ioctl, shutDown, startSwtpm, type Swtpm } from './throwaway-swtpm.js';
import { STATE_CIPHER, stateKeyMaterial } from './state-key.js';
import { stateFileName } from './state-file.js';

const KEY_FD = 3;

export interface StateToCheck {
  spec: TpmSpec;
  state: Buffer;
  stateKey: Buffer;
  /** A directory on a memory file system for the short-lived copy. */
  scratchRoot: string;
}

export async function stateLoads(check: StateToCheck): Promise<boolean> {
  const scratch = await mkdtemp(join(check.scratchRoot, 'vtpm-check-'));
  let swtpm: Swtpm | undefined;
  try {
    const dir = join(scratch, 'state');
    await mkdir(dir, { mode: 0o700 });
    await writeFile(join(dir, stateFileName(check.spec)), check.state, { mode: 0o600 });
    const key = ['--key', `fd=${KEY_FD},mode=${STATE_CIPHER},format=hex`];
    swtpm = await startSwtpm(check.spec, scratch, 'check', ['--tpmstate', `dir=${dir},mode=0600`, ...key], {
      [KEY_FD]: stateKeyMaterial(check.stateKey),
    });
    return await ioctl(swtpm, '-i').then(
      () => true,
      () => false,
    );
  } finally {
    if (swtpm) await shutDown(swtpm);
    await rm(scratch, { recursive: true, force: true });
  }
}
