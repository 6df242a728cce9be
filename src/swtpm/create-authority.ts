/**
 * Creating the deployment's EK and platform CA, named after the deployment:
 * a root CA and, signed by it, the CA that issues the TPMs' certificates,
 * in the files and encrypted-key layout swtpm_localca uses, so that
 * swtpm_localca then signs with it as if it had made it. swtpm_localca
 * would make one itself when its signing key is missing, but under its
 * stock names ("swtpm-localca-rootca", "swtpm-localca") and with the key
 * passwords on certtool's command line, which every local user's `ps` shows.
 *
 * Here the keys are made in process, and written encrypted (PKCS #8,
 * AES-256-CBC); certtool, which makes the certificates, reads the passwords
 * of the keys it loads from a template in the scratch directory (tmpfs) and
 * from GNUTLS_PIN, in the environment of a child only its user can read.
 * The keys' PBKDF2 runs OpenSSL's default 2048 iterations rather than
 * certtool's 600,000: stretching protects a guessable password, and these
 * are 256-bit random secrets; every certificate the CA signs (three for a
 * claimed pooled TPM) decrypts the signing key once.
 */
import { generateKeyPair } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { writeFileAtomically } from '../keys/files.js';
import type { CaPasswords } from './certificate-authority.js';
import { runProgram } from './run-program.js';

const KEY_BITS = 3072;

/** An RSA key as encrypted PKCS #8 PEM, generated off the event loop. */
function encryptedKey(passphrase: string): Promise<string> {
  return new Promise((resolve, reject) =>
    generateKeyPair(
      'rsa',
      {
        modulusLength: KEY_BITS,
        publicKeyEncoding: { type: 'spki', format: 'pem' },
        privateKeyEncoding: { type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase },
      },
      (error, _publicKey, privateKey) => (error ? reject(error) : resolve(privateKey)),
    ),
  );
}

/** The CA's files, by the names swtpm_localca gives them (existing deployments have them so). */
export const AUTHORITY_FILES = {
  rootKey: 'swtpm-localca-rootca-privkey.pem',
  rootCertificate: 'swtpm-localca-rootca-cert.pem',
  signingKey: 'signkey.pem',
  issuerCertificate: 'issuercert.pem',
  serial: 'certserial',
} as const;

/** The common names of the two CAs of a deployment named `name`. */
export function authorityNames(name: string): { root: string; issuer: string } {
  return { root: `${name} root CA`, issuer: `${name} TPM CA` };
}

/** What a deployment's name may hold: it goes into certtool's template and certificates' common names (64). */
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9 ._:@()-]{0,55}$/;
export const CA_NAME_RULE = 'up to 56 letters, digits, spaces or any of ._:@()-, starting with a letter or digit';

export function isCaName(name: string): boolean {
  return NAME_PATTERN.test(name) && !name.endsWith(' ');
}

/** A deployment not named otherwise is named after the host its control plane first ran on. */
export function defaultCaName(): string {
  return `vtpm-manager ${hostname().split('.')[0]}`.slice(0, 56).trimEnd();
}

const caTemplate = (commonName: string) => [`cn = "${commonName}"`, 'ca', 'cert_signing_key', 'expiration_days = -1'];

/**
 * Makes the CA in `dir` (which must not have one) through files in `work`, a private directory on tmpfs that
 * the caller removes; each file reaches `dir` whole and durable, the issuer's certificate last.
 */
export async function createAuthority(dir: string, name: string, passwords: CaPasswords, work: string): Promise<void> {
  await mkdir(work, { recursive: true, mode: 0o700 });
  try {
    const file = (key: keyof typeof AUTHORITY_FILES) => join(work, AUTHORITY_FILES[key]);
    const template = async (label: string, lines: string[]) => {
      const path = join(work, `${label}.template`);
      await writeFile(path, `${lines.join('\n')}\n`, { mode: 0o600 });
      return path;
    };
    const certtool = (args: string[], pin: string) => runProgram('certtool', args, { env: { GNUTLS_PIN: pin } });
    const generateKey = async (key: 'rootKey' | 'signingKey', password: string) =>
      writeFile(file(key), await encryptedKey(password), { mode: 0o600 });
    const names = authorityNames(name);

    const makeCertificate = async (
      out: 'rootCertificate' | 'issuerCertificate',
      signer: string[],
      lines: string[],
      pin: string,
    ) => certtool(['--outfile', file(out), '--template', await template(out, lines), ...signer], pin);

    await generateKey('rootKey', passwords.root);
    await makeCertificate(
      'rootCertificate',
      ['--generate-self-signed', '--load-privkey', file('rootKey')],
      caTemplate(names.root),
      passwords.root,
    );
    await generateKey('signingKey', passwords.signing);
    await makeCertificate(
      'issuerCertificate',
      [
        '--generate-certificate',
        '--load-privkey',
        file('signingKey'),
        '--load-ca-privkey',
        file('rootKey'),
        '--load-ca-certificate',
        file('rootCertificate'),
      ],
      [...caTemplate(names.issuer), `password = ${passwords.root}`],
      passwords.signing,
    );
    for (const key of ['rootKey', 'rootCertificate', 'signingKey', 'issuerCertificate'] as const)
      await writeFileAtomically(join(dir, AUTHORITY_FILES[key]), await readFile(file(key)));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
