import type { KeyManager } from '../keys/key-manager.js';
import { withSecret } from '../keys/wiped.js';
import { DEPLOYMENT_PROJECT, SECRET_SETTINGS, type Store } from '../store/index.js';
import type { CaPasswords } from '../swtpm/certificate-authority.js';

/**
 * The CA's key passwords are key-manager secrets whose references are kept in
 * the store; the first start creates them.
 */
export async function caPasswords(store: Store, keys: KeyManager): Promise<CaPasswords> {
  const password = async (setting: string): Promise<string> => {
    let ref = await store.settings.get(setting);
    if (ref === undefined) {
      const created = await keys.createSecret(setting, { project: DEPLOYMENT_PROJECT });
      ref = await store.settings.setOnce(setting, created);
      if (ref !== created) await keys.deleteSecret(created);
    }
    return withSecret(keys, ref, (secret) => secret.toString('hex'));
  };
  return {
    signing: await password(SECRET_SETTINGS.caSigningKeyPassword),
    root: await password(SECRET_SETTINGS.caRootKeyPassword),
  };
}
