/**
 * What several operations need of a vTPM's row: loading it for an actor
 * (policy decides), its spec and firmware, its API view and attachment.
 */
import type { Attachment, VtpmView } from '../api/vtpms.js';
import { isUuid } from '../api/patterns.js';
import { enforceOnVtpm, type Principal, type VtpmOperation } from '../auth/policy.js';
import { InvalidArgumentError, NotFoundError, StateConflictError } from '../errors.js';
import { libvirtTpmXml } from '../hypervisor/libvirt.js';
import { libvirtFirmwareXml, qemuFirmwareArgs } from '../hypervisor/ovmf.js';
import { qemuTpmArgs } from '../hypervisor/qemu.js';
import type { VtpmRecord } from '../store/index.js';
import type { Firmware } from '../tpm-spec/firmware.js';
import type { SecretSecurity } from '../tpm-spec/secret-security.js';
import { isTpmModel, isTpmVersion, type TpmSpec } from '../tpm-spec/tpm-spec.js';
import type { ControlPlane } from './control-plane.js';

export function normalizeVm(vm: string): string {
  const normalized = vm.trim().toLowerCase();
  if (!isUuid(normalized)) {
    throw new InvalidArgumentError('vm', 'a VM UUID such as 6f1c2a0e-9b7d-4c3e-8f21-0a1b2c3d4e5f', vm);
  }
  return normalized;
}

export function specOf(record: VtpmRecord): TpmSpec {
  if (!isTpmVersion(record.version) || !isTpmModel(record.model)) {
    throw new StateConflictError(
      `vTPM ${record.vm} has an unknown spec in the store (${record.version}/${record.model})`,
    );
  }
  return { version: record.version, model: record.model };
}

export const firmwareOf = (record: VtpmRecord): Firmware => ({
  type: record.firmware === 'uefi' ? 'uefi' : 'bios',
  secureBoot: record.secure_boot,
});

export const targetOf = (record: VtpmRecord) => ({
  vm: record.vm,
  project: record.project,
  secretSecurity: record.secret_security as SecretSecurity,
});

/** The one mapping from a vTPM's row to what the API shows: named field by field, so no new column leaks by itself. */
export function toVtpmView(record: VtpmRecord): VtpmView {
  return {
    vm: record.vm,
    project: record.project,
    version: record.version,
    model: record.model,
    firmware: record.firmware,
    secure_boot: record.secure_boot,
    host: record.host,
    status: record.status,
    secret_security: record.secret_security,
    socket: record.status === 'running' ? record.socket : null,
    spec_sources: record.spec_claims,
    created_at: record.created_at,
    updated_at: record.updated_at,
  };
}

/** An operation that acts on a host (start, stop, a migration's destination) names it: a libvirt hook's need it. */
type OnHost = { operation: VtpmOperation; host: string | undefined };

/** The vTPM, if the actor may do `operation` to it; another project's vTPM it may not see is reported as missing. */
export async function loadVtpm(cp: ControlPlane, vm: string, actor: Principal, operation: VtpmOperation | OnHost) {
  const record = await cp.store.vtpms.get(normalizeVm(vm));
  if (!record) throw new NotFoundError('vTPM for VM', vm);
  const onHost = typeof operation === 'string' ? { operation, host: undefined } : operation;
  enforceOnVtpm(actor, onHost.operation, { ...targetOf(record), host: onHost.host });
  return record;
}

/** Runs `change` under the VM's lock, on the row as it is once the lock is held. */
export async function withVtpm<T>(
  cp: ControlPlane,
  vm: string,
  actor: Principal,
  operation: VtpmOperation | OnHost,
  change: (current: VtpmRecord) => Promise<T>,
): Promise<T> {
  const record = await loadVtpm(cp, vm, actor, operation);
  return cp.locks.run(record.vm, async () => change(await loadVtpm(cp, record.vm, actor, operation)));
}

/** How a guest attaches to the vTPM on `host` (its own host by default). */
export function attachmentOf(cp: ControlPlane, record: VtpmRecord, host = record.host): Attachment {
  const spec = specOf(record);
  const firmware = firmwareOf(record);
  const { socket, nvram } = cp.fleet.agentFor(host).devicePaths(record.vm);
  return {
    socket,
    qemu_args: [...qemuFirmwareArgs(firmware, nvram), ...qemuTpmArgs(spec, socket)],
    libvirt_xml: libvirtTpmXml(spec, socket),
    libvirt_firmware_xml: libvirtFirmwareXml(firmware, nvram),
  };
}

export function conflict(record: VtpmRecord, message: string): StateConflictError {
  return new StateConflictError(message, { vm: record.vm, status: record.status });
}
