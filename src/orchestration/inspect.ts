/** The read-only operations on vTPMs: list, show, history, attachment, EK certificates. */
import type { Attachment, EkCertificate, GenerationView, VtpmView } from '../api/vtpms.js';
import { decideOnVtpm, type Principal } from '../auth/policy.js';
import { StateConflictError } from '../errors.js';
import { withSecret } from '../keys/wiped.js';
import { certificateNames, openEkCertificates, toPem } from '../vault/ek-certificates.js';
import type { ControlPlane } from './control-plane.js';
import { attachmentOf, loadVtpm, targetOf, toVtpmView } from './vtpm-records.js';

export async function listVtpms(cp: ControlPlane, actor: Principal): Promise<VtpmView[]> {
  const records = await cp.store.vtpms.list();
  return records.filter((r) => decideOnVtpm(actor, 'read', targetOf(r)) === 'allow').map(toVtpmView);
}

export async function showVtpm(cp: ControlPlane, vm: string, actor: Principal): Promise<VtpmView> {
  return toVtpmView(await loadVtpm(cp, vm, actor, 'read'));
}

export async function generationHistory(cp: ControlPlane, vm: string, actor: Principal): Promise<GenerationView[]> {
  const record = await loadVtpm(cp, vm, actor, 'read');
  return (await cp.vault.history(record.vm)).map(({ generation, kind, size, digest, reason, created_at }) => ({
    generation,
    kind,
    size,
    digest,
    reason,
    created_at,
  }));
}

/** How to attach a guest to the vTPM; the socket exists while the vTPM runs. */
export async function vtpmAttachment(cp: ControlPlane, vm: string, actor: Principal): Promise<Attachment> {
  return attachmentOf(cp, await loadVtpm(cp, vm, actor, 'read'));
}

export async function ekCertificates(cp: ControlPlane, vm: string, actor: Principal): Promise<EkCertificate[]> {
  const record = await loadVtpm(cp, vm, actor, 'read');
  const sealed = record.ek_certificates;
  if (!sealed) {
    throw new StateConflictError(`vTPM ${record.vm} has no EK certificate (it is ${record.status})`, { vm: record.vm });
  }
  return withSecret(cp.keys, record.secret_ref, (secret) =>
    openEkCertificates(secret, record.vm, sealed).map((c) => ({
      key_type: c.keyType,
      pem: toPem(c.der),
      ...certificateNames(c.der),
    })),
  );
}
