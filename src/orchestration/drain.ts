/**
 * Draining a host before its maintenance or retirement (`vtpm host drain`):
 * it is disabled, so nothing new is placed there, and its vTPMs move off it.
 * A stopped one moves at once: its state is in the vault, not on the host,
 * and moving it reads no secret, so an admin moves every project's. A
 * running one leaves with its VM's live migration (`vtpm migrate`, or
 * libvirt's with the hook); once stopped, its next start places it on
 * another host (start.ts), and draining again moves it. `vtpm host enable`
 * ends the drain.
 */
import type { HostVacated, VacatedVtpm } from '../api/hosts.js';
import { enforceOnDeployment, type Principal } from '../auth/policy.js';
import { NotFoundError } from '../errors.js';
import type { ControlPlane } from './control-plane.js';
import { placeAndMove } from './evacuate.js';

export async function drainHost(
  cp: ControlPlane,
  host: string,
  reason: string,
  actor: Principal,
): Promise<HostVacated> {
  enforceOnDeployment(actor, 'hosts-manage');
  if (!(await cp.store.hosts.setDisabled(host, reason, { draining: true }))) throw new NotFoundError('host', host);
  const vtpms: VacatedVtpm[] = [];
  for (const { vm } of await cp.store.vtpms.list({ host })) {
    const drained = await cp.locks.run(vm, () => drainOne(cp, vm, host));
    if (drained) vtpms.push(drained);
  }
  cp.logger.info({ host, reason, vtpms: vtpms.length }, 'host draining');
  return { host, vtpms };
}

/** Under the VM's lock, on the row as it is now; undefined when it is no longer the host's. */
async function drainOne(cp: ControlPlane, vm: string, host: string): Promise<VacatedVtpm | undefined> {
  const record = await cp.store.vtpms.get(vm);
  if (!record || record.host !== host) return undefined;
  if (record.status !== 'stopped') {
    return {
      vm,
      result: 'stays',
      to: null,
      status: record.status,
      generation: null,
      reason:
        `it is ${record.status}: it leaves with its VM's live migration (vtpm migrate --to HOST); ` +
        'once stopped, its next start places it elsewhere',
    };
  }
  return placeAndMove(cp, record, undefined, 'vtpm.drain');
}
