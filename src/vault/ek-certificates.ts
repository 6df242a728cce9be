/**
 * EK certificates are kept in the database sealed under a key derived from
 * the vTPM's own secret: they identify the VM's TPM, and deleting the secret
 * makes them as unreadable as the state.
 */
import { hkdfSync, X509Certificate } from 'node:crypto';
import { KEY_BYTES, open, seal } from '../keys/aead.js';
import type { EkCertificate } from '../swtpm/manufacture.js';

const associatedData = (vm: string) => `vtpm-manager/ek-certificates/${vm}`;

function derivedKey(secret: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), 'vtpm-manager ek-certificates v1', KEY_BYTES));
}

export function sealEkCertificates(secret: Buffer, vm: string, certificates: EkCertificate[]): Buffer {
  const plaintext = Buffer.from(
    JSON.stringify(certificates.map((c) => ({ key_type: c.keyType, der: c.der.toString('base64') }))),
  );
  return seal(derivedKey(secret), plaintext, associatedData(vm));
}

export function openEkCertificates(secret: Buffer, vm: string, sealed: Buffer): EkCertificate[] {
  const plaintext = open(derivedKey(secret), sealed, associatedData(vm), `EK certificates of vTPM ${vm}`);
  return (JSON.parse(plaintext.toString()) as Array<{ key_type: string; der: string }>).map((c) => ({
    keyType: c.key_type,
    der: Buffer.from(c.der, 'base64'),
  }));
}

export function toPem(der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`;
}

/** Whom a certificate names and who issued it, one RDN after another; null for what is no certificate. */
export function certificateNames(der: Buffer): { subject: string | null; issuer: string | null } {
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(der);
  } catch {
    return { subject: null, issuer: null };
  }
  // Node gives an empty name (a TPM 1.2 EK certificate's subject) as undefined, whatever its type says.
  const shown = (name: string | undefined) => (name ?? '').split('\n').join(', ');
  return { subject: shown(certificate.subject), issuer: shown(certificate.issuer) };
}
