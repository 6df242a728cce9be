/**
 * Evacuation of a lost host (Nova's `evacuate`, which Nova refuses for a
 * server with a vTPM): every vTPM it held is fenced off it and made ready
 * on another host, from the vault's newest generation, which holds every
 * state the host's agent had reported and been answered for. What the lost
 * swtpms held beyond that was never acknowledged.
 *
 * Fenced: the vTPM's row names the new host and no launch, so whatever the
 * lost host's swtpm still says is refused (state-ingest.ts), and the host
 * stops it when it comes back (fence.ts). The vTPM is then stopped on its
 * new host: the hypervisor side brings the guest up there, and its start
 * (the new host's libvirt hook, or `vtpm start`) runs the vTPM.
 *
 * Only a host that is down is evacuated: one that answers still runs its
 * guests, and moving their vTPMs away would leave two TPMs for one VM. Who
 * may move each vTPM is the policy's `operate`: a vTPM whose secret is bound
 * to its project (secret security `user`) moves for its project's token
 * only, and is named as skipped in an admin's evacuation.
 */
import type { VacatedVtpm, HostVacated } from '../api/hosts.js';
import { decideOnVtpm, enforceOnDeployment, enforceOnVtpm, type Principal } from '../auth/policy.js';
import { InvalidArgumentError, NotFoundError, StateConflictError, VtpmError } from '../errors.js';
import type { VtpmRecord } from '../store/index.js';
import type { ControlPlane } from './control-plane.js';
import { settleMigration } from './migrate.js';
import { destinationHasGuest } from './state-ingest.js';
import { specOf, targetOf } from './vtpm-records.js';

/** Statuses in which a vTPM's swtpm may run on its host: fenced, then stopped on the new one. */
const MAY_RUN = new Set(['running', 'starting', 'stopping']);

export async function evacuateHost(
  cp: ControlPlane,
  host: string,
  options: { to?: string | undefined },
  actor: Principal,
): Promise<HostVacated> {
  enforceOnDeployment(actor, 'evacuate');
  await requireDown(cp, host);
  if (options.to !== undefined) await requireDestination(cp, host, options.to);
  const held = await cp.store.vtpms.list({ host });
  const migratingHere = (await cp.store.vtpms.list({ statuses: ['migrating'] })).filter((r) => r.migrating_to === host);
  const vtpms: VacatedVtpm[] = [];
  for (const record of [...held, ...migratingHere]) {
    const decision = decideOnVtpm(actor, 'operate', targetOf(record));
    if (decision === 'hide') continue;
    const evacuated =
      decision === 'forbid'
        ? skipped(
            record,
            refusalOf(() => enforceOnVtpm(actor, 'operate', targetOf(record))),
          )
        : await cp.locks.run(record.vm, () => evacuateOne(cp, record.vm, host, options.to));
    if (evacuated) vtpms.push(evacuated);
  }
  const moved = vtpms.filter((v) => v.result === 'moved').length;
  cp.logger.warn({ host, moved, skipped: vtpms.length - moved }, 'host evacuated');
  return { host, vtpms };
}

async function requireDown(cp: ControlPlane, host: string): Promise<void> {
  const known = await cp.fleet.host(host);
  if (!known) throw new NotFoundError('host', host);
  if (host === cp.fleet.manufacturer.hostName) {
    throw new StateConflictError(`${host} is the control plane's own host: it runs while the control plane does`, {
      host,
    });
  }
  if (known.state !== 'down') {
    throw new StateConflictError(
      `${host} is up (its agent was heard of at ${known.last_seen}): only a host that is down is evacuated; ` +
        'move its vTPMs with `vtpm migrate`, or stop them and start them with --host',
      { host, state: known.state },
    );
  }
}

async function requireDestination(cp: ControlPlane, host: string, to: string): Promise<void> {
  if (to === host) throw new InvalidArgumentError('to', `a host other than ${host}, which is evacuated`, to);
  const destination = await cp.fleet.host(to);
  if (!destination) throw new NotFoundError('host', to);
  if (destination.state === 'down') {
    throw new StateConflictError(`${to} is down too (its agent was last heard of at ${destination.last_seen})`, {
      host: to,
      state: destination.state,
    });
  }
}

function refusalOf(check: () => void): string {
  try {
    check();
    return 'refused';
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

const skipped = (record: VtpmRecord, reason: string): VacatedVtpm => ({
  vm: record.vm,
  result: 'skipped',
  to: null,
  status: record.status,
  generation: null,
  reason,
});

/** A vTPM that runs on after its migration is settled. */
const running = (
  record: VtpmRecord,
  where: Pick<VacatedVtpm, 'result' | 'to' | 'generation'>,
  reason: string,
): VacatedVtpm => ({ vm: record.vm, ...where, status: 'running', reason });

/** Under the VM's lock, on the row as it is now; undefined when it is no longer the lost host's. */
async function evacuateOne(
  cp: ControlPlane,
  vm: string,
  host: string,
  to: string | undefined,
): Promise<VacatedVtpm | undefined> {
  const record = await cp.store.vtpms.get(vm);
  if (!record || (record.host !== host && record.migrating_to !== host)) return undefined;
  if (record.status === 'migrating') return settleMigrationOf(cp, record, host, to);
  if (!MAY_RUN.has(record.status) && record.status !== 'stopped') {
    return skipped(record, `it is ${record.status}: that operation finishes first (then evacuate again)`);
  }
  return placeAndMove(cp, record, to);
}

/**
 * Moves the vTPM, stopped, to `to` or where the scheduler places it; skipped with the reason when no host
 * takes it. `operation` names the move in the audit log.
 */
export async function placeAndMove(
  cp: ControlPlane,
  record: VtpmRecord,
  to: string | undefined,
  operation = 'vtpm.evacuate',
): Promise<VacatedVtpm> {
  let destination: string;
  try {
    destination = to ?? (await cp.fleet.place(specOf(record)));
    if (to !== undefined) await cp.fleet.requireHostFor(specOf(record), to);
  } catch (error) {
    if (error instanceof VtpmError) return skipped(record, error.message);
    throw error;
  }
  return moveTo(cp, record, destination, operation);
}

/**
 * A live migration the lost host took part in. Its destination lost: the source keeps the guest, and the
 * migration is abandoned. Its source lost: a destination that has the guest (it reported state, or its QEMU
 * is connected) completes it; otherwise the migration is abandoned and the vTPM evacuated.
 */
async function settleMigrationOf(
  cp: ControlPlane,
  record: VtpmRecord,
  host: string,
  to: string | undefined,
): Promise<VacatedVtpm | undefined> {
  const destination = record.migrating_to!;
  if (destination === host) {
    await settleMigration(cp, record, destination, 'abandoned');
    return running(
      record,
      { result: 'stays', to: null, generation: null },
      `its live migration to ${host} is abandoned: it runs on ${record.host} as before`,
    );
  }
  if (await destinationHasGuest(cp, record, destination)) {
    await settleMigration(cp, record, destination, 'completed');
    const generation = await newestGeneration(cp, record.vm);
    return running(
      record,
      { result: 'moved', to: destination, generation },
      `its live migration to ${destination} is completed: the guest runs there`,
    );
  }
  await settleMigration(cp, record, destination, 'abandoned');
  return evacuateOne(cp, record.vm, host, to);
}

async function newestGeneration(cp: ControlPlane, vm: string): Promise<number | null> {
  return (await cp.store.generations.head(vm, 'tpm'))?.generation ?? null;
}

async function moveTo(
  cp: ControlPlane,
  record: VtpmRecord,
  destination: string,
  operation: string,
): Promise<VacatedVtpm> {
  const ran = MAY_RUN.has(record.status);
  if (ran) {
    cp.vaultKeys.drop(record.vm);
    await cp.vault.endRun(record.vm);
  }
  const moved = await cp.audit.holding(async () => {
    await cp.audit.record({
      operation,
      vm: record.vm,
      project: record.project,
      result: 'ok',
      detail: { from: record.host, to: destination, was: record.status },
    });
    return cp.audit.transaction((store) =>
      store.vtpms.update(record.vm, { status: 'stopped', socket: null, instance: null, host: destination }, [
        record.status,
      ]),
    );
  });
  if (!moved) throw new StateConflictError(`vTPM ${record.vm} changed while it was evacuated`, { vm: record.vm });
  const generation = await newestGeneration(cp, record.vm);
  cp.logger.warn(
    { vm: record.vm, from: record.host, to: destination, was: record.status, generation, operation },
    'vTPM moved off its host',
  );
  return {
    vm: record.vm,
    result: 'moved',
    to: destination,
    status: moved.status,
    generation,
    reason: ran
      ? `it was ${record.status} on ${record.host}; it starts on ${destination} from generation ${generation}`
      : `it was stopped; it starts on ${destination}`,
  };
}
