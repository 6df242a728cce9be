/** vTPMs in a given state, and what the vault holds of them, for orchestration unit tests. */
import { randomUUID } from 'node:crypto';
import type { StateKind, VtpmRecord } from '../../store/index.js';
import { withVaultKey } from '../../vault/vault-key.js';
import { FakeHostAgent } from './fake-host-agent.js';
import { createVtpm } from '../create.js';
import { startVtpm } from '../start.js';
import { stopVtpm } from '../stop.js';
import { alice, openTestControlPlane, type TestControlPlane } from './control-plane-harness.js';

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
  const generation = await withVaultKey(t.keys, (await row(t, vm)).secret_ref, (vaultKey) =>
    t.cp.vault.newest(vm, kind, vaultKey),
  );
  if (!generation) throw new Error(`no ${kind} generation of ${vm}`);
  return generation;
}

/** [kind, generation, reason] of every generation, per kind newest first. */
export async function generations(t: TestControlPlane, vm: string): Promise<Array<[string, number, string]>> {
  return (await t.cp.vault.history(vm)).map((g) => [g.kind, g.generation, g.reason]);
}

/** A stopped vTPM with generations 1 (manufactured) and 2 (written by its guest). */
export async function withTwoGenerations(t: TestControlPlane): Promise<{ vm: string; manufactured: Buffer }> {
  const vm = await stoppedVtpm(t);
  const manufactured = (await newest(t, vm)).data;
  await startVtpm(t.cp, vm, alice);
  await t.local.guestWrites(vm, Buffer.from('written by the guest'));
  await stopVtpm(t.cp, vm, alice);
  await t.settle();
  return { vm, manufactured };
}

/** A control plane with a second host, host-b, beside its own. */
export async function openWithSecondHost(): Promise<{ t: TestControlPlane; hostB: FakeHostAgent }> {
  const hostB = new FakeHostAgent('host-b');
  return { t: await openTestControlPlane({ hosts: [hostB] }), hostB };
}
