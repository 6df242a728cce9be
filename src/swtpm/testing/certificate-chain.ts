/** For tests: whether a certificate verifies, through a CA's issuing certificate, up to its root (certtool). */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AUTHORITY_FILES } from '../create-authority.js';
import { runProgram } from '../run-program.js';

/**
 * Resolves when `pem` chains to the root in `authorityDir`; rejects with certtool's verdict otherwise.
 * `sha1` lets a SHA-1 signature pass, which TPM 1.2 EK certificates have (swtpm_cert follows TCG's 1.2 profile).
 */
export async function verifyAgainstAuthority(pem: string, authorityDir: string, sha1 = false): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'vtpm-chain-'));
  try {
    const chain = join(dir, 'chain.pem');
    const issuer = await readFile(join(authorityDir, AUTHORITY_FILES.issuerCertificate), 'utf8');
    await writeFile(chain, `${pem.trimEnd()}\n${issuer}`);
    await runProgram('certtool', [
      '--verify',
      ...(sha1 ? ['--verify-allow-broken'] : []),
      '--load-ca-certificate',
      join(authorityDir, AUTHORITY_FILES.rootCertificate),
      '--infile',
      chain,
    ]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
