/**
 * Secure boot on or off for a UEFI guest. Either way the variable store's
 * generations are deleted and a fresh default takes their place (oVirt's
 * semantics: its secure-boot data goes with the setting), in one transaction.
 */
import type { VtpmView } from '../api/vtpms.js';
import type { Principal } from '../auth/policy.js';
import { withVaultKey } from '../vault/vault-key.js';
import type { ControlPlane } from './control-plane.js';
import { conflict, toVtpmView, withVtpm } from './vtpm-records.js';

export async function setSecureBoot(
  cp: ControlPlane,
  vm: string,
  secureBoot: boolean,
  actor: Principal,
): Promise<VtpmView> {
  return withVtpm(cp, vm, actor, 'operate', async (current) => {
    if (current.firmware !== 'uefi') {
      throw conflict(
        current,
        `VM ${current.vm} uses BIOS firmware; secure boot needs UEFI (create it with --firmware uefi)`,
      );
    }
    if (current.status !== 'stopped') {
      throw conflict(current, `vTPM ${current.vm} is ${current.status}; change secure boot while it is stopped`);
    }
    if (current.secure_boot === secureBoot) return toVtpmView(current);
    const fresh = await cp.fleet.manufacturer.defaultVariableStore(secureBoot);
    // The setting and the variable store change together: a crash between them would boot the guest with
    // one setting's firmware and the other's variables (or with no variable store at all).
    const updated = await withVaultKey(cp.keys, current.secret_ref, (vaultKey) =>
      cp.store.transaction(async (store) => {
        const vault = cp.vault.within(store);
        await vault.forget(current.vm, 'nvram');
        await vault.commit(current.vm, 'nvram', vaultKey, fresh, 'create');
        return store.vtpms.update(current.vm, { secure_boot: secureBoot }, ['stopped']);
      }),
    );
    cp.logger.info({ vm: current.vm, secureBoot }, 'secure boot changed; variable store reset');
    return toVtpmView(updated ?? current);
  });
}
