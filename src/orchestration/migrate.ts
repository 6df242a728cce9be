/**
 * Live migration. Prepare: the destination's swtpm starts from the vault's
 * newest generation under the same secret, so the incoming QEMU finds its
 * socket; QEMU carries the TPM's state itself, in its migration stream. The
 * source keeps serving, and its reports keep reaching the vault, until a
 * swtpm exits: the source's completes the migration (QEMU leaves the source
 * only once the guest runs on the destination), the destination's abandons
 * it. Preparing again for the same destination is answered as prepared.
 */
import { randomUUID } from 'node:crypto';
import type { Migration } from '../api/vtpms.js';
import type { Principal } from '../auth/policy.js';
import { StateConflictError } from '../errors.js';
import { withSecret, withWiped } from '../keys/wiped.js';
import type { VtpmRecord } from '../store/index.js';
import { vaultKeyFrom } from '../vault/state-vault.js';
import type { ControlPlane } from './control-plane.js';
import { commitChange } from './state-ingest.js';
import { runSteps } from './steps.js';
import { attachmentOf, conflict, firmwareOf, specOf, toVtpmView, withVtpm } from './vtpm-records.js';

export type MigrationOutcome = 'completed' | 'abandoned';

export async function migrateVtpm(cp: ControlPlane, vm: string, to: string, actor: Principal): Promise<Migration> {
  return withVtpm(cp, vm, actor, { operation: 'operate', host: to }, async (current) => {
    const prepared = (r: VtpmRecord): Migration => ({ ...toVtpmView(r), ...attachmentOf(cp, r, to), from: r.host, to });
    if (current.status === 'migrating' && current.migrating_to === to) return prepared(current);
    if (current.status !== 'running') {
      throw conflict(
        current,
        `vTPM ${current.vm} is ${current.status}; only a running vTPM is live-migrated ` +
          '(a stopped one starts on any host: vtpm start --host)',
      );
    }
    if (to === current.host)
      throw new StateConflictError(`vTPM ${current.vm} already runs on ${to}`, { vm: current.vm, host: to });
    await cp.fleet.requireHostFor(specOf(current), to);
    const migrating = await withSecret(cp.keys, current.secret_ref, (secret) => prepare(cp, current, to, secret));
    cp.logger.info({ vm: current.vm, from: current.host, to }, 'live migration prepared');
    return prepared(migrating);
  });
}

async function prepare(cp: ControlPlane, current: VtpmRecord, to: string, secret: Buffer): Promise<VtpmRecord> {
  const firmware = firmwareOf(current);
  const { tpm, nvram } = await withWiped(vaultKeyFrom(secret), async (vaultKey) => ({
    tpm: await cp.vault.newest(current.vm, 'tpm', vaultKey),
    nvram: firmware.type === 'uefi' ? await cp.vault.newest(current.vm, 'nvram', vaultKey) : undefined,
  }));
  if (!tpm) throw new StateConflictError(`vTPM ${current.vm} has no state in the vault`, { vm: current.vm });
  const state = { migrating: current };
  const steps = [
    {
      // From now on the destination's reports are held until the migration is settled.
      name: 'hold-destination-reports',
      run: async () => cp.migrations.begin(current.vm),
      undo: async () => void cp.migrations.end(current.vm),
    },
    {
      name: 'mark-migrating',
      async run() {
        const patch = { status: 'migrating' as const, migrating_to: to, migrating_instance: randomUUID() };
        const migrating = await cp.store.vtpms.update(current.vm, patch, ['running']);
        if (!migrating)
          throw new StateConflictError(`vTPM ${current.vm} changed while its migration was prepared`, {
            vm: current.vm,
          });
        state.migrating = migrating;
      },
      undo: async () => {
        const patch = { status: 'running' as const, migrating_to: null, migrating_instance: null };
        await cp.store.vtpms.update(current.vm, patch, ['migrating']);
      },
    },
    {
      name: 'run-destination-swtpm',
      async run() {
        const request = {
          vm: current.vm,
          instance: state.migrating.migrating_instance!,
          spec: specOf(current),
          firmware,
          stateKey: secret,
          state: tpm.data,
          nvram: nvram?.data,
        };
        const agent = cp.fleet.agentFor(to);
        try {
          await agent.start(request);
        } catch (error) {
          await agent.stop(current.vm).catch(() => undefined);
          throw error;
        }
      },
    },
  ];
  await runSteps({ operation: 'migrate', steps, logger: cp.logger }, state);
  return state.migrating;
}

/** Ends a migration: the vTPM runs on the destination with what it reported meanwhile, or stays on the source. */
export async function settleMigration(
  cp: ControlPlane,
  record: VtpmRecord,
  destination: string,
  outcome: MigrationOutcome,
) {
  if (outcome === 'completed') {
    // The destination's state first: the host moves only once the vault holds what the guest now runs on.
    for (const change of cp.migrations.peek(record.vm)) await commitChange(cp, record, change, { chained: false });
  }
  const patch =
    outcome === 'completed'
      ? {
          status: 'running' as const,
          host: destination,
          instance: record.migrating_instance,
          migrating_to: null,
          migrating_instance: null,
          socket: cp.fleet.agentFor(destination).devicePaths(record.vm).socket,
        }
      : { status: 'running' as const, migrating_to: null, migrating_instance: null };
  await cp.store.vtpms.update(record.vm, patch, ['migrating']);
  cp.migrations.end(record.vm);
  const done = outcome === 'completed' ? 'live migration completed' : 'live migration abandoned';
  cp.logger.info({ vm: record.vm, from: record.host, to: destination, outcome }, done);
  if (outcome === 'abandoned') {
    // The destination's copy is not the vTPM's: its swtpm stops (if it still runs) and the copy goes.
    const agent = cp.fleet.agentFor(destination);
    try {
      await agent.stop(record.vm);
      await agent.destroy(record.vm);
    } catch (error) {
      cp.logger.warn({ vm: record.vm, host: destination, err: error }, "the abandoned destination's copy stays");
    }
  }
}
