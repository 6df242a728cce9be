/**
 * Certificates for the VM a manufactured TPM is given to: the provisioning
 * pool makes TPMs before anyone asks for them, so swtpm_setup certified their
 * EKs for the pool entry. When one is claimed, the deployment's CA issues its
 * EK and platform certificates anew with the VM's UUID as subject (what
 * swtpm_localca does with --vmid), and they replace the old ones in the TPM's
 * NV memory, where the guest reads them.
 *
 * The state runs in a throwaway swtpm on tmpfs, encrypted under the vTPM's
 * key as everywhere; what this returns is the new state and the certificates
 * read back from it. Nothing outlives a failure but the CA's serial number.
 *
 * TPM 1.2 EK certificates have an empty subject (TCG's 1.2 credential
 * profile; swtpm_cert leaves --subject out for them), so there is nothing of
 * the VM to put in them and a pooled TPM 1.2 keeps its certificate.
 */
import { X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EmulatorError, IntegrityError } from '../errors.js';
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';
import type { CertificateAuthority, PreparedAuthority } from './certificate-authority.js';
import type { EkCertificate } from './manufacture.js';
import { runProgram } from './run-program.js';
import { stateFileName } from './state-file.js';
import { inScratch, ioctl, shutDown, startTpmServer, type TpmServer } from './throwaway-swtpm.js';
import {
  EK_CERTIFICATE_INDICES,
  expectSuccess,
  type NvDefinition,
  nvDefinition,
  PLATFORM_CERTIFICATE_INDEX,
  readEkCertificatesFrom,
  readNvIndex,
  rewritePlatformIndex,
  tpm2,
} from './tpm2-commands.js';

export interface IssueOptions {
  vm: string;
  spec: TpmSpec;
  /** The TPM's state, encrypted under `stateKey`. */
  state: Buffer;
  stateKey: Buffer;
  /** Its certificates as they are (kept for TPM 1.2). */
  ekCertificates: EkCertificate[];
  authority: CertificateAuthority;
  /** A directory on a memory file system for the short-lived files. */
  scratchRoot: string;
}

export interface CertifiedTpm {
  state: Buffer;
  ekCertificates: EkCertificate[];
}

/** swtpm's names of the curves it makes EKs on, by their JWK names. */
const CURVES: Record<string, string> = { 'P-256': 'secp256r1', 'P-384': 'secp384r1' };

export async function issueEkCertificates(options: IssueOptions): Promise<CertifiedTpm> {
  if (options.spec.version !== '2.0') return { state: options.state, ekCertificates: options.ekCertificates };
  return inScratch(options.scratchRoot, 'vtpm-issue-', async (scratch, running) => {
    const stateDir = join(scratch, 'state');
    await mkdir(stateDir, { mode: 0o700 });
    const stateFile = join(stateDir, stateFileName(options.spec));
    await writeFile(stateFile, options.state, { mode: 0o600 });
    const authority = await options.authority.prepare(scratch);
    const issuer = new X509Certificate(await readFile(options.authority.issuerCertificatePath));
    const tpm = await startTpmServer(options.spec, scratch, 'issuer', stateDir, options.stateKey, running);
    let ekCertificates: EkCertificate[];
    try {
      const attributes = tpmAttributes(await ioctl(tpm.swtpm, '--info', '3'));
      const issue = (type: 'ek' | 'platform', key: string) =>
        localca(authority, scratch, type, [...attributes, '--ek', key, '--vmid', options.vm]);
      const held: Array<CertifiedIndex & { type: 'ek' | 'platform' }> = [];
      for (const [type, index] of [
        ...Object.values(EK_CERTIFICATE_INDICES).map((i) => ['ek', i] as const),
        ['platform', PLATFORM_CERTIFICATE_INDEX] as const,
      ]) {
        const found = await certifiedIndex(tpm, index, issuer);
        if (found) held.push({ ...found, type });
      }
      // At once: each is two programs started and the signing key decrypted, which is latency more than work.
      const issued = await Promise.all(held.map((h) => issue(h.type, localcaKey(h.certificate))));
      for (const [i, h] of held.entries()) await rewritePlatformIndex(tpm.send, h.definition, issued[i]!);
      ekCertificates = await readEkCertificatesFrom(tpm.send);
      await expectSuccess(tpm.send, 'TPM2_Shutdown', tpm2.shutdownClear);
    } finally {
      tpm.close();
      await shutDown(tpm.swtpm);
    }
    return { state: await readFile(stateFile), ekCertificates };
  });
}

interface CertifiedIndex {
  definition: NvDefinition;
  certificate: X509Certificate;
}

/**
 * The certificate in `index` and how the index is defined, if the TPM has one there. Only a key this CA
 * certified is certified again: the certificate must verify against the CA's.
 */
async function certifiedIndex(
  tpm: TpmServer,
  index: number,
  issuer: X509Certificate,
): Promise<CertifiedIndex | undefined> {
  const definition = await nvDefinition(tpm.send, index);
  if (!definition) return undefined;
  const certificate = new X509Certificate((await readNvIndex(tpm.send, index))!);
  if (!certificate.verify(issuer.publicKey))
    throw new IntegrityError(
      `the certificate in NV index 0x${index.toString(16)} was not issued by the deployment's CA: ` +
        'it is not certified again',
    );
  return { definition, certificate };
}

/** The public key a certificate certifies, as swtpm_localca's --ek takes it: an RSA modulus, or x=,y=,id=. */
function localcaKey(certificate: X509Certificate): string {
  const jwk = certificate.publicKey.export({ format: 'jwk' });
  const hex = (value: string | undefined) => Buffer.from(value ?? '', 'base64url').toString('hex');
  if (jwk.kty === 'RSA') return hex(jwk.n);
  const curve = CURVES[jwk.crv ?? ''];
  if (!curve) throw new EmulatorError(`an EK certificate certifies a key on an unknown curve (${jwk.crv})`);
  return `x=${hex(jwk.x)},y=${hex(jwk.y)},id=${curve}`;
}

/**
 * swtpm_setup's arguments describing the TPM, from the same source it reads them from (swtpm's CMD_GET_INFO,
 * TPM specification and attributes): family, level and revision; manufacturer, model and firmware version.
 */
function tpmAttributes(info: string): string[] {
  const parsed = JSON.parse(info) as {
    TPMSpecification: { family: string; level: number; revision: number };
    TPMAttributes: { manufacturer: string; model: string; version: string };
  };
  const { TPMSpecification: spec, TPMAttributes: tpm } = parsed;
  return [
    '--tpm-spec-family',
    spec.family,
    '--tpm-spec-level',
    String(spec.level),
    '--tpm-spec-revision',
    String(spec.revision),
    '--tpm-manufacturer',
    tpm.manufacturer,
    '--tpm-model',
    tpm.model,
    '--tpm-version',
    tpm.version,
    '--tpm2',
  ];
}

/** One certificate from swtpm_localca, as swtpm_setup would have had it made: DER. */
async function localca(
  authority: PreparedAuthority,
  scratch: string,
  type: 'ek' | 'platform',
  args: string[],
): Promise<Buffer> {
  const out = await mkdtemp(join(scratch, 'cert-'));
  await runProgram(
    'swtpm_localca',
    [
      '--type',
      type,
      ...args,
      '--dir',
      out,
      '--configfile',
      authority.localcaConfigPath,
      '--optsfile',
      authority.localcaOptionsPath,
    ],
    { env: authority.env },
  );
  return readFile(join(out, type === 'platform' ? 'platform.cert' : 'ek.cert'));
}
