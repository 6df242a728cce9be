/**
 * Delete: crypto-erase first (the secret), then the host's copy, the vault's
 * generations and the row. It only moves forward: a vTPM left `deleting` by
 * a failure is finished by the next `vtpm delete` or by reconcile.
 */
import type { Principal } from '../auth/policy.js';
import type { VtpmRecord } from '../store/index.js';
import type { ControlPlane } from './control-plane.js';
import { settleMigration } from './migrate.js';
import { conflict, withVtpm } from './vtpm-records.js';

export async function deleteVtpm(
  cp: ControlPlane,
  vm: string,
  options: { force: boolean; dryRun?: boolean },
  actor: Principal,
): Promise<void> {
  await withVtpm(cp, vm, actor, 'delete', async (current) => {
    if (current.status !== 'stopped' && current.status !== 'deleting' && !options.force) {
      throw conflict(current, `vTPM ${current.vm} is ${current.status}; stop it first or delete with --force`);
    }
    // What a confirmation is asked for must be allowed first: refusals come before the question.
    if (options.dryRun) return;
    const to = current.migrating_to;
    if (current.status === 'migrating' && to !== null) {
      // The destination's copy goes first, as when its QEMU leaves: the migration is abandoned.
      await cp.fleet.agentFor(to).stop(current.vm);
      await settleMigration(cp, current, to, 'abandoned');
    }
    // A host no longer connected runs nothing of it (erase skips it too).
    if (current.status !== 'stopped' && cp.fleet.isConnected(current.host)) {
      await cp.fleet.agentFor(current.host).stop(current.vm);
    }
    await cp.store.vtpms.update(current.vm, { status: 'deleting' });
    await erase(cp, current);
    cp.logger.info({ vm: current.vm }, 'vTPM deleted');
  });
}

/** Everything of a vTPM, everywhere; idempotent, so that an interrupted erase can run again. */
export async function erase(cp: ControlPlane, record: Pick<VtpmRecord, 'vm' | 'host' | 'secret_ref'>): Promise<void> {
  await cp.keys.deleteSecret(record.secret_ref);
  if (cp.fleet.isConnected(record.host)) await cp.fleet.agentFor(record.host).destroy(record.vm);
  await cp.vault.forget(record.vm);
  await cp.store.vtpms.delete(record.vm);
}

/**
 * What cannot be erased now (the key manager is unreachable, say) stays `deleting` for `vtpm delete` or the next
 * start.
 */
export async function leaveDeleting(cp: ControlPlane, vm: string, error: unknown): Promise<void> {
  cp.logger.error(
    { vm, err: error },
    'rollback incomplete: the vTPM stays deleting until `vtpm delete` or the next start finishes it',
  );
  await cp.store.vtpms.update(vm, { status: 'deleting' });
}
