/**
 * The one entry point for what hosts report: a vTPM's state changed, a
 * swtpm exited. The in-process agent and the agents' routes call it alike.
 * Only the host a vTPM runs on is heard; a live migration's destination is
 * held to (its newest report of each kind is kept, answered at once so that
 * its agent goes on to report its swtpm's exit) until the migration settles.
 */
import type { StateChange, VtpmExit } from '../agent/host-agent.js';
import { StateConflictError } from '../errors.js';
import type { ControlPlane } from './control-plane.js';
import { settleMigration } from './migrate.js';

export async function ingestStateChange(cp: ControlPlane, host: string, change: StateChange): Promise<void> {
  const record = await cp.store.vtpms.get(change.vm);
  if (record?.status === 'migrating' && record.migrating_to === host) {
    if (!cp.migrations.hold(change)) {
      cp.logger.warn(
        { vm: change.vm, host },
        'a migration destination reported state with no migration under way; not taken',
      );
    }
    return;
  }
  if (record && record.host !== host) {
    throw new StateConflictError(
      `vTPM ${change.vm} runs on ${record.host}, not on ${host}: ${host}'s report of its state is not taken`,
      { vm: change.vm, host },
    );
  }
  await commitChange(cp, change);
}

export async function commitChange(cp: ControlPlane, change: StateChange): Promise<void> {
  const vaultKey = cp.vaultKeys.get(change.vm);
  if (!vaultKey) {
    cp.logger.error(
      { vm: change.vm },
      'a state change arrived for a vTPM with no vault key in memory; it is not committed',
    );
    return;
  }
  try {
    const reason = change.final ? 'stop' : 'sync';
    const generation = await cp.vault.commit(change.vm, change.kind, vaultKey, change.data, reason);
    if (generation !== undefined) {
      cp.logger.debug(
        { vm: change.vm, kind: change.kind, generation, final: change.final },
        'state generation committed',
      );
    }
  } catch (error) {
    cp.logger.error(
      { vm: change.vm, err: error },
      'a state change could not be committed to the vault; the host keeps its copy',
    );
    throw error;
  }
}

/**
 * Not under the VM's lock: stop holds it while it waits for this very exit.
 * During a live migration the exits decide its outcome (see migrate.ts).
 */
export async function ingestExit(cp: ControlPlane, host: string, exit: VtpmExit): Promise<void> {
  const record = await cp.store.vtpms.get(exit.vm);
  if (!record) return;
  const destination = record.migrating_to;
  if (record.status === 'migrating' && destination !== null && (host === record.host || host === destination)) {
    await settleMigration(cp, record, destination, host === record.host ? 'completed' : 'abandoned');
    return;
  }
  if (record.host !== host) return;
  cp.vaultKeys.drop(exit.vm);
  await cp.store.vtpms.update(exit.vm, { status: 'stopped', socket: null }, ['running', 'stopping']);
}
