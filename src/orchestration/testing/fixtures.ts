/** vTPMs in a given state, and what the vault holds of them, for orchestration unit tests. */
import { randomUUID } from 'node:crypto';
import type { StateKind, VtpmRecord } from '../../store/index.js';
import { vaultKeyFrom } from '../../vault/state-vault.js';
import { createVtpm } from '../create.js';
import { startVtpm } from '../start.js';
import { alice, type TestControlPlane } from './control-plane-harness.js';

/** A stopped vTPM (BIOS unless `uefi`), by its VM UUID, on the host placement chose (the one with fewest). */
export async function stoppedVtpm(t: TestControlPlane, options: { uefi?: boolean } = {}): Promise<string> {
  const vm = randomUUID();
  await createVtpm(t.cp, { vm, version: '2.0', ...(options.uefi ? { firmware: 'uefi' } : {}) }, alice);
  return vm;
}

/** A vTPM running on the control plane's own host (or `host`), wherever it was placed. */
export async function runningVtpm(t: TestControlPlane, options: { uefi?: boolean; host?: string } = {}) {
  const vm = await stoppedVtpm(t, options);
  await startVtpm(t.cp, vm, alice, { host: options.host ?? t.local.hostName });
  return vm;
}

export async function row(t: TestControlPlane, vm: string): Promise<VtpmRecord> {
  const record = await t.cp.store.vtpms.get(vm);
  if (!record) throw new Error(`no row for ${vm}`);
  return record;
}

/** The vault's newest generation of a kind, opened with the vTPM's own secret. */
export async function newest(t: TestControlPlane, vm: string, kind: StateKind = 'tpm') {
  const secret = await t.keys.readSecret((await row(t, vm)).secret_ref);
  const generation = await t.cp.vault.newest(vm, kind, vaultKeyFrom(secret));
  secret.fill(0);
  if (!generation) throw new Error(`no ${kind} generation of ${vm}`);
  return generation;
}

/** [kind, generation, reason] of every generation, per kind newest first. */
export async function generations(t: TestControlPlane, vm: string): Promise<Array<[string, number, string]>> {
  return (await t.cp.vault.history(vm)).map((g) => [g.kind, g.generation, g.reason]);
}
