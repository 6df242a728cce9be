/**
 * The steps create, adopt and import share: a `creating` row under a secret
 * of its own, the first generations in the vault, the sealed EK
 * certificates and `stopped`. Each undoes only what it made.
 */
import { StateConflictError } from '../errors.js';
import type { NewVtpm, VtpmRecord } from '../store/index.js';
import type { EkCertificate } from '../swtpm/manufacture.js';
import type { Firmware } from '../tpm-spec/firmware.js';
import type { SecretSecurity } from '../tpm-spec/secret-security.js';
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';
import { sealEkCertificates } from '../vault/ek-certificates.js';
import { vaultKeyFrom } from '../vault/state-vault.js';
import { withWiped } from '../keys/wiped.js';
import type { ControlPlane } from './control-plane.js';
import { leaveDeleting } from './delete.js';
import type { Step } from './steps.js';

export interface NewVtpmState {
  row: NewVtpm;
  spec: TpmSpec;
  firmware: Firmware;
  /** Zeroed when the operation ends. */
  keep: (secret: Buffer) => Buffer;
  secret?: Buffer;
  created?: VtpmRecord;
}

export async function refuseExisting(cp: ControlPlane, vm: string): Promise<void> {
  if (await cp.store.vtpms.get(vm)) throw new StateConflictError(`a vTPM for VM ${vm} already exists`, { vm });
}

export interface RowRequest {
  vm: string;
  spec: TpmSpec;
  claims: unknown;
  firmware: Firmware;
  secretSecurity: SecretSecurity;
  host: string;
  project: string;
}

export function newRow(request: RowRequest): NewVtpm {
  return {
    vm: request.vm,
    project: request.project,
    version: request.spec.version,
    model: request.spec.model,
    firmware: request.firmware.type,
    secure_boot: request.firmware.secureBoot,
    host: request.host,
    status: 'creating',
    secret_ref: '',
    spec_claims: request.claims,
    ek_certificates: null,
    socket: null,
    secret_security: request.secretSecurity,
    migrating_to: null,
    instance: null,
    migrating_instance: null,
  };
}

/**
 * A fresh secret in the key manager and the `creating` row naming it; the secret goes again if the row cannot be
 * written.
 */
export function reserveStep<S extends NewVtpmState>(cp: ControlPlane, secret?: (s: S) => Buffer): Step<S> {
  return {
    name: 'reserve',
    async run(s) {
      const owner = { project: s.row.project };
      const label = `vtpm-${s.row.vm}`;
      const ref = secret
        ? await cp.keys.storeSecret(label, owner, secret(s))
        : await cp.keys.createSecret(label, owner);
      s.row = { ...s.row, secret_ref: ref };
      try {
        await cp.store.vtpms.insert(s.row);
      } catch (error) {
        await cp.keys.deleteSecret(ref);
        throw error;
      }
    },
    undo: (s) => unreserve(cp, s),
  };
}

/** Crypto-erase first: once the secret is gone, any copy of the state is noise. */
export async function unreserve(cp: ControlPlane, s: NewVtpmState): Promise<void> {
  await cp.keys.deleteSecret(s.row.secret_ref);
  await cp.store.vtpms.delete(s.row.vm);
}

export function readSecretStep<S extends NewVtpmState>(cp: ControlPlane): Step<S> {
  return {
    name: 'read-secret',
    async run(s) {
      s.secret = s.keep(await cp.keys.readSecret(s.row.secret_ref));
    },
  };
}

/** The TPM's first state, and for UEFI guests a fresh variable store, as generation 1. */
export function commitStep<S extends NewVtpmState>(
  cp: ControlPlane,
  reason: 'create' | 'adopt',
  state: (s: S) => Buffer,
): Step<S> {
  return {
    name: 'commit-first-generations',
    run: (s) =>
      committingAll(cp, s.row.vm, () =>
        withWiped(vaultKeyFrom(s.secret!), async (vaultKey) => {
          await cp.vault.commit(s.row.vm, 'tpm', vaultKey, state(s), reason);
          if (s.firmware.type !== 'uefi') return;
          const variables = await cp.fleet.manufacturer.defaultVariableStore(s.firmware.secureBoot);
          await cp.vault.commit(s.row.vm, 'nvram', vaultKey, variables, 'create');
        }),
      ),
    undo: (s) => cp.vault.forget(s.row.vm),
  };
}

/**
 * A new vTPM's generations, all or none: a step's undo is not run for its own failure, so the
 * generations committed before the one that failed go here (the VM had none before).
 */
export async function committingAll(cp: ControlPlane, vm: string, commit: () => Promise<void>): Promise<void> {
  try {
    await commit();
  } catch (error) {
    await cp.vault.forget(vm);
    throw error;
  }
}

export function finishStep<S extends NewVtpmState>(cp: ControlPlane, certificates: (s: S) => EkCertificate[]): Step<S> {
  return {
    name: 'finish',
    async run(s) {
      const ekCertificates = sealEkCertificates(s.secret!, s.row.vm, certificates(s));
      const ready = await cp.store.vtpms.update(s.row.vm, { status: 'stopped', ek_certificates: ekCertificates }, [
        'creating',
      ]);
      if (!ready) throw new StateConflictError(`vTPM ${s.row.vm} changed while it was being created`, { vm: s.row.vm });
      s.created = ready;
    },
  };
}

/** When undoing fails too, the vTPM is left `deleting`; the failure that caused the undo stays the one reported. */
export const undoFailed =
  (cp: ControlPlane) =>
  (s: NewVtpmState, error: unknown): Promise<void> =>
    leaveDeleting(cp, s.row.vm, error);
