/**
 * The one entry point for what hosts report: a vTPM's state changed, a
 * swtpm exited. The in-process agent and the agents' routes call it alike.
 *
 * Only the swtpm that serves the vTPM now is heard: its host, and its launch
 * (`instance`), so that a late or replayed report of an earlier launch
 * changes nothing. A live migration's destination is held to (its newest
 * report of each kind is kept, answered at once so that its agent goes on to
 * report its swtpm's exit) until the migration settles.
 *
 * A report is answered only once its state is in the vault, or refused (4xx:
 * the host drops it); any other failure is an error the host tries again,
 * keeping the state in its working copy meanwhile.
 */
import type { StateChange, VtpmExit } from '../agent/host-agent.js';
import { NotFoundError, StateConflictError } from '../errors.js';
import type { VtpmRecord } from '../store/index.js';
import { withSecret } from '../keys/wiped.js';
import { vaultKeyFrom } from '../vault/state-vault.js';
import type { ControlPlane } from './control-plane.js';
import { settleMigration } from './migrate.js';

export const isDestination = (record: VtpmRecord, host: string, instance: string) =>
  record.status === 'migrating' &&
  record.migrating_to === host &&
  (record.migrating_instance === null || record.migrating_instance === instance);

/** A running row without an instance (from before launches had ids, on a host not heard from since) hears its host. */
export const isServing = (record: VtpmRecord, host: string, instance: string) =>
  record.host === host && (record.instance === instance || (record.instance === null && record.status !== 'stopped'));

export async function ingestStateChange(cp: ControlPlane, host: string, change: StateChange): Promise<void> {
  try {
    await ingestOne(cp, host, change);
  } catch (error) {
    if (error instanceof StateConflictError) cp.metrics.stateReportRefusals.inc({ host });
    throw error;
  }
}

async function ingestOne(cp: ControlPlane, host: string, change: StateChange): Promise<void> {
  const record = await cp.store.vtpms.get(change.vm);
  if (!record) throw new NotFoundError('vTPM for VM', change.vm);
  if (isDestination(record, host, change.instance)) {
    if (!cp.migrations.hold(change)) {
      cp.logger.warn({ vm: change.vm, host }, 'a migration destination reported state with no migration under way');
      throw new StateConflictError(`vTPM ${change.vm} has no migration to ${host} under way here`, { vm: change.vm });
    }
    return;
  }
  if (!isServing(record, host, change.instance)) {
    const serving = record.host === host ? 'an earlier swtpm' : host;
    throw new StateConflictError(
      `vTPM ${change.vm} runs on ${record.host}: the report of ${serving} (instance ${change.instance}) is not taken`,
      { vm: change.vm, host },
    );
  }
  await commitChange(cp, record, change, { chained: true });
}

/**
 * Commits a reported state. The vault key of a running vTPM is in memory;
 * one that is not (the control plane restarted, or the host reported in
 * later) is read from the key manager, and a key manager that cannot answer
 * is a failure the host tries again. `chained`: the report must follow what
 * the vault holds (see StateVault.commit); a migration's held reports do not,
 * since the destination's state came through QEMU's stream.
 */
export async function commitChange(
  cp: ControlPlane,
  record: VtpmRecord,
  change: StateChange,
  options: { chained: boolean },
): Promise<void> {
  const held = cp.vaultKeys.get(change.vm);
  const reason = change.final ? 'stop' : 'sync';
  const follows = options.chained ? change.after : undefined;
  const commit = (vaultKey: Buffer) => cp.vault.commit(change.vm, change.kind, vaultKey, change.data, reason, follows);
  try {
    const generation = held
      ? await commit(held)
      : await withSecret(cp.keys, record.secret_ref, async (secret) => {
          const vaultKey = vaultKeyFrom(secret);
          if (record.status === 'running' || record.status === 'migrating') cp.vaultKeys.hold(record.vm, vaultKey);
          try {
            return await commit(vaultKey);
          } finally {
            if (cp.vaultKeys.get(record.vm) !== vaultKey) vaultKey.fill(0);
          }
        });
    if (generation !== undefined) {
      cp.logger.debug({ vm: change.vm, kind: change.kind, generation, final: change.final }, 'state committed');
    }
  } catch (error) {
    cp.logger.error({ vm: change.vm, err: error }, 'a reported state was not committed; the host keeps its copy');
    if (error instanceof StateConflictError && follows !== undefined) throw await namingHead(cp, change, error);
    throw error;
  }
}

/**
 * A stale report's refusal names the vault's head: the host may have sent that state itself, its answer lost,
 * and no longer name it among the few a report names; it then follows it (see StateWatcher).
 */
async function namingHead(cp: ControlPlane, change: StateChange, refusal: StateConflictError): Promise<Error> {
  const head = await cp.store.generations.head(change.vm, change.kind).catch(() => undefined);
  return head ? new StateConflictError(refusal.message, { ...refusal.details, head: head.digest }) : refusal;
}

/**
 * Not under the VM's lock: stop holds it while it waits for this very exit.
 * During a live migration the exits decide its outcome (see migrate.ts).
 * An exit of any other launch than the one serving the vTPM changes nothing.
 */
export async function destinationHasGuest(cp: ControlPlane, record: VtpmRecord, destination: string): Promise<boolean> {
  if (cp.migrations.peek(record.vm).length > 0) return true;
  try {
    return await cp.fleet.agentFor(destination).guestConnected(record.vm);
  } catch (error) {
    // Which way the guest went cannot be told: the migration is taken as done, as QEMU leaving suggests.
    cp.logger.warn(
      { vm: record.vm, host: destination, err: error },
      'the destination did not say whether it has the guest',
    );
    return true;
  }
}

export async function ingestExit(cp: ControlPlane, host: string, exit: VtpmExit): Promise<void> {
  const record = await cp.store.vtpms.get(exit.vm);
  if (!record) return;
  const destination = record.migrating_to;
  if (destination !== null && isDestination(record, host, exit.instance)) {
    await settleMigration(cp, record, destination, 'abandoned');
    return;
  }
  if (!isServing(record, host, exit.instance)) {
    cp.logger.info({ vm: exit.vm, host, instance: exit.instance }, 'the exit of an earlier swtpm changes nothing');
    return;
  }
  if (record.status === 'migrating' && destination !== null) {
    // The source's swtpm leaves when its QEMU hands the guest over, or when the guest shut down before any
    // migration ran: only a destination that got the guest (it reported state, or its QEMU is connected) takes over.
    if (await destinationHasGuest(cp, record, destination)) {
      await settleMigration(cp, record, destination, 'completed');
      return;
    }
    await settleMigration(cp, record, destination, 'abandoned');
  }
  cp.vaultKeys.drop(exit.vm);
  await cp.vault.endRun(exit.vm);
  await cp.store.vtpms.update(exit.vm, { status: 'stopped', socket: null }, ['running', 'stopping']);
}
