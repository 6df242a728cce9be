/**
 * Export: a portable, passphrase-sealed bundle of the vTPM: its spec, owner,
 * EK certificates, secret, and the newest `generations` of each kind of
 * state (all of them with 'all'), as committed in the vault.
 */
import type { Principal } from '../auth/policy.js';
import { withSecret, withWiped } from '../keys/wiped.js';
import { STATE_KINDS, type VtpmRecord } from '../store/index.js';
import { checkPassphrase } from '../keys/passphrase-envelope.js';
import { type BundleGeneration, writeBundle } from '../vault/bundle.js';
import { openEkCertificates } from '../vault/ek-certificates.js';
import { vaultKeyFrom } from '../vault/state-vault.js';
import type { ControlPlane } from './control-plane.js';
import { conflict, loadVtpm } from './vtpm-records.js';

export interface ExportRequest {
  passphrase: string;
  generations: number | 'all';
}

export async function exportVtpm(
  cp: ControlPlane,
  vm: string,
  request: ExportRequest,
  actor: Principal,
): Promise<Buffer> {
  const record = await loadVtpm(cp, vm, actor, 'export');
  checkPassphrase(request.passphrase);
  if (record.status === 'creating' || record.status === 'deleting')
    throw conflict(record, `vTPM ${record.vm} is ${record.status}`);
  return withSecret(cp.keys, record.secret_ref, async (secret) => {
    const generations = await withWiped(vaultKeyFrom(secret), (vaultKey) =>
      chosenGenerations(cp, record, request, vaultKey),
    );
    const ekCertificates = record.ek_certificates ? openEkCertificates(secret, record.vm, record.ek_certificates) : [];
    cp.logger.info({ vm: record.vm, generations: generations.length }, 'vTPM exported');
    const { vm: id, project, version, model, firmware, secure_boot } = record;
    const certificates = ekCertificates.map((c) => ({ key_type: c.keyType, der: c.der }));
    const payload = {
      vm: id,
      project,
      version,
      model,
      firmware,
      secure_boot,
      secret,
      ek_certificates: certificates,
      generations,
    };
    return writeBundle(payload, request.passphrase);
  });
}

async function chosenGenerations(cp: ControlPlane, record: VtpmRecord, request: ExportRequest, vaultKey: Buffer) {
  const generations: BundleGeneration[] = [];
  const history = await cp.vault.history(record.vm);
  for (const kind of STATE_KINDS) {
    if (!(await cp.vault.newest(record.vm, kind, vaultKey))) continue;
    const chosen = history
      .filter((g) => g.kind === kind)
      .slice(0, request.generations === 'all' ? undefined : request.generations)
      .reverse();
    for (const g of chosen) {
      const { data } = await cp.vault.read(record.vm, kind, g.generation, vaultKey);
      generations.push({ kind, generation: g.generation, reason: g.reason, created_at: g.created_at, data });
    }
  }
  return generations;
}
