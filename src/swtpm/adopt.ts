/**
 * Adoption: takes the state file another manager's swtpm left (libvirt's
 * `emulator` backend), and returns the same TPM re-encrypted under the
 * vTPM's own key, with the EK certificates found in its NV memory.
 *
 * The TPM itself is untouched: its permanent state moves from one swtpm to
 * another through swtpm's state-blob interface (what QEMU uses for
 * migration), encrypted in transit with a one-time migration key, so the
 * plaintext TPM state never reaches a file. What the guest sees afterwards
 * (EK, NV indices, PCR banks, seeds) is exactly what it saw before.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EmulatorError, InvalidArgumentError } from '../errors.js';
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';
import type { EkCertificate } from './manufacture.js';
import { STATE_CIPHER, stateKeyMaterial } from './state-key.js';
import { stateFileName } from './state-file.js';
import { inScratch, ioctl, shutDown, startSwtpm, startTpmServer, type Swtpm } from './throwaway-swtpm.js';
import { readEkCertificatesFrom, responseCode, tpm2 } from './tpm2-commands.js';

export interface AdoptOptions {
  spec: TpmSpec;
  /** The state file as the other manager's swtpm wrote it. */
  state: Buffer;
  /** The passphrase the other manager encrypted the state with (libvirt's secret value), if it did. */
  sourcePassphrase?: Buffer | undefined;
  /** The vTPM's own key, which the adopted state is encrypted under. */
  stateKey: Buffer;
  /** A directory on a memory file system for the short-lived files. */
  scratchRoot: string;
}

export interface AdoptedTpm {
  state: Buffer;
  ekCertificates: EkCertificate[];
}

const SOURCE_KEY_FD = 3;
const TARGET_KEY_FD = 3;
const MIGRATION_KEY_FD = 4;

export async function adoptState(options: AdoptOptions): Promise<AdoptedTpm> {
  return inScratch(options.scratchRoot, 'vtpm-adopt-', async (scratch, running) => {
    const [sourceDir, targetDir] = [join(scratch, 'source'), join(scratch, 'target')];
    await mkdir(sourceDir, { mode: 0o700 });
    await mkdir(targetDir, { mode: 0o700 });
    await writeFile(join(sourceDir, stateFileName(options.spec)), options.state, { mode: 0o600 });
    const migrationKey = randomBytes(32).toString('hex');
    const migration = ['--migration-key', `fd=${MIGRATION_KEY_FD},mode=${STATE_CIPHER},format=hex`];

    const source = await startSwtpm(
      options.spec,
      scratch,
      'source',
      [
        '--tpmstate',
        `dir=${sourceDir},mode=0600`,
        ...migration,
        ...(options.sourcePassphrase ? ['--key', `pwdfd=${SOURCE_KEY_FD},mode=${STATE_CIPHER}`] : []),
      ],
      options.sourcePassphrase
        ? { [MIGRATION_KEY_FD]: migrationKey, [SOURCE_KEY_FD]: options.sourcePassphrase }
        : { [MIGRATION_KEY_FD]: migrationKey },
    );
    running.push(source);
    // swtpm hands out its permanent state only from an initialised
    // TPM; initialising does not start it (no TPM2_Startup).
    // The state is the caller's (another manager's file): one that does not open is bad input, a 4xx.
    await ioctl(source, '-i').catch(() => {
      throw new InvalidArgumentError(
        'state',
        options.sourcePassphrase
          ? `a swtpm state of TPM ${options.spec.version} that opens with the given secret ` +
              "(the secret is wrong, or the state is not one of this TPM version's)"
          : `a swtpm state of TPM ${options.spec.version} that opens without a secret ` +
              "(an encrypted one needs its secret, or the state is not one of this TPM version's)",
      );
    });
    const blob = join(scratch, 'permanent.blob');
    await ioctl(source, '--save', 'permanent', blob);
    await shutDown(source);

    const target = await startSwtpm(
      options.spec,
      scratch,
      'target',
      [
        '--tpmstate',
        `dir=${targetDir},mode=0600`,
        ...migration,
        '--key',
        `fd=${TARGET_KEY_FD},mode=${STATE_CIPHER},format=hex`,
      ],
      { [MIGRATION_KEY_FD]: migrationKey, [TARGET_KEY_FD]: stateKeyMaterial(options.stateKey) },
    );
    running.push(target);
    await ioctl(target, '--load', 'permanent', blob);
    // Initialising makes swtpm write the loaded state, now under the vTPM's key.
    await ioctl(target, '-i');
    await shutDown(target);
    const state = await readFile(join(targetDir, stateFileName(options.spec)));

    const ekCertificates =
      options.spec.version === '2.0'
        ? await readEkCertificates(options.spec, scratch, targetDir, options.stateKey, running)
        : [];
    return { state, ekCertificates };
  });
}

/** Boots a throwaway copy of the adopted TPM and reads the EK certificates from their TCG-defined NV indices. */
async function readEkCertificates(
  spec: TpmSpec,
  scratch: string,
  stateDir: string,
  stateKey: Buffer,
  running: Swtpm[],
): Promise<EkCertificate[]> {
  const tpm = await startTpmServer(spec, scratch, 'reader', stateDir, stateKey, running);
  try {
    const random = await tpm.send(tpm2.getRandom16);
    if (responseCode(random) !== 0)
      throw new EmulatorError(`the adopted TPM does not answer (0x${responseCode(random).toString(16)})`);
    return await readEkCertificatesFrom(tpm.send);
  } finally {
    tpm.close();
    await shutDown(tpm.swtpm);
  }
}
