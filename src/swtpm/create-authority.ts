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
import { createPrivateKey, generateKeyPair } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomically } from '../keys/files.js';
import { authorityNames } from './ca-name.js';
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

/** OpenSSL's (and Node's) PBKDF2 iterations for an encrypted PKCS #8 key: what this CA's keys are written with. */
const KEY_ITERATIONS = 2048;
/** The DER of PBKDF2's object identifier, 1.2.840.113549.1.5.12. */
const PBKDF2_OID = Buffer.from('06092a864886f70d01050c', 'hex');

/**
 * The PBKDF2 iteration count of an encrypted PKCS #8 PEM key, read from its PBES2 parameters
 * (PBKDF2-params: SEQUENCE { salt OCTET STRING, iterationCount INTEGER, ... }); undefined for another layout.
 */
export function keyIterations(pem: string): number | undefined {
  const match = /-----BEGIN ENCRYPTED PRIVATE KEY-----([^-]+)-----END/.exec(pem);
  if (!match?.[1]) return undefined;
  const der = Buffer.from(match[1].replace(/\s+/g, ''), 'base64');
  let at = der.indexOf(PBKDF2_OID);
  if (at < 0) return undefined;
  at += PBKDF2_OID.length;
  // Short-form lengths only: the parameters of a PEM key are a few dozen bytes.
  if (der[at] !== 0x30 || der[at + 2] !== 0x04) return undefined;
  at += 3 + der[at + 3]! + 1;
  if (der[at] !== 0x02) return undefined;
  const length = der[at + 1]!;
  if (length < 1 || length > 4) return undefined;
  return der.readUIntBE(at + 2, length);
}

/**
 * A key certtool encrypted (600,000 PBKDF2 iterations, as swtpm_localca's CAs of earlier versions have),
 * written again with the same password at this CA's iterations: the same key, so the CA stays the same,
 * without a third of a second of key stretching for every certificate it signs. Undefined if it already is.
 */
export function rewrappedKey(pem: string, passphrase: string): string | undefined {
  const iterations = keyIterations(pem);
  if (iterations === undefined || iterations <= KEY_ITERATIONS) return undefined;
  return createPrivateKey({ key: pem, format: 'pem', passphrase })
    .export({ type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase })
    .toString();
}

/** The CA's files, by the names swtpm_localca gives them (existing deployments have them so). */
export const AUTHORITY_FILES = {
  rootKey: 'swtpm-localca-rootca-privkey.pem',
  rootCertificate: 'swtpm-localca-rootca-cert.pem',
  signingKey: 'signkey.pem',
  issuerCertificate: 'issuercert.pem',
  serial: 'certserial',
} as const;

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
