/**
 * Restore: an older generation becomes the newest again, as a new
 * generation; nothing is deleted. Stopped vTPMs only.
 */
import type { Restored } from '../api/vtpms.js';
import type { Principal } from '../auth/policy.js';
import { withVaultKey } from '../vault/vault-key.js';
import type { ControlPlane } from './control-plane.js';
import { conflict, toVtpmView, withVtpm } from './vtpm-records.js';

export async function restoreGeneration(
  cp: ControlPlane,
  vm: string,
  generation: number,
  actor: Principal,
): Promise<Restored> {
  return withVtpm(cp, vm, actor, 'operate', async (current) => {
    if (current.status !== 'stopped') {
      throw conflict(current, `vTPM ${current.vm} is ${current.status}; only a stopped vTPM can be restored`);
    }
    const committed = await withVaultKey(cp.keys, current.secret_ref, async (vaultKey) => {
      const chosen = await cp.vault.read(current.vm, 'tpm', generation, vaultKey);
      return cp.vault.commit(current.vm, 'tpm', vaultKey, chosen.data, 'restore');
    });
    cp.logger.info({ vm: current.vm, from: generation, generation: committed }, 'state generation restored');
    return { ...toVtpmView(current), generation: committed! };
  });
}
