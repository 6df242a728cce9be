/**
 * Manufacturing: swtpm_setup creates the TPM's endorsement keys (TPM 2.0: RSA
 * and ECC; TPM 1.2: RSA), has the deployment's CA certify them, writes the
 * certificates into the TPM's NV memory, and leaves the state encrypted under
 * the vTPM's own key.
 */
import { chmod, mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';
import type { CertificateAuthority } from './certificate-authority.js';
import { KEY_FD, runProgram } from './run-program.js';
import { STATE_CIPHER, stateKeyMaterial } from './state-key.js';

export interface EkCertificate {
  /** As swtpm names it: rsa2048, secp384r1, ... */
  keyType: string;
  der: Buffer;
}

export interface ManufactureOptions {
  vm: string;
  spec: TpmSpec;
  stateDir: string;
  stateKey: Buffer;
  authority: CertificateAuthority;
  /** A directory on a memory file system for the short-lived configuration. */
  scratchRoot: string;
  /** At the lowest CPU priority (nice 19), for work ahead of demand. */
  background?: boolean;
}

export async function manufactureTpm(options: ManufactureOptions): Promise<EkCertificate[]> {
  await mkdir(options.stateDir, { recursive: true, mode: 0o700 });
  const scratch = await mkdtemp(join(options.scratchRoot, 'vtpm-manufacture-'));
  try {
    const certsDir = join(scratch, 'certs');
    await mkdir(certsDir, { mode: 0o700 });
    const authority = await options.authority.prepare(scratch);
    const is2 = options.spec.version === '2.0';
    await runProgram(
      'swtpm_setup',
      [
        ...(is2 ? ['--tpm2', '--create-platform-cert'] : []),
        '--tpm-state',
        options.stateDir,
        '--config',
        authority.setupConfigPath,
        '--createek',
        '--create-ek-cert',
        '--keyfile-fd',
        String(KEY_FD),
        '--cipher',
        STATE_CIPHER,
        '--write-ek-cert-files',
        certsDir,
        '--vmid',
        options.vm,
        '--overwrite',
      ],
      { env: authority.env, keyMaterial: stateKeyMaterial(options.stateKey), lowPriority: options.background ?? false },
    );
    for (const file of await readdir(options.stateDir)) await chmod(join(options.stateDir, file), 0o600);
    const certificates: EkCertificate[] = [];
    for (const file of (await readdir(certsDir)).sort()) {
      const match = /^ek-(.+)\.crt$/.exec(file);
      if (match?.[1]) certificates.push({ keyType: match[1], der: await readFile(join(certsDir, file)) });
    }
    return certificates;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
