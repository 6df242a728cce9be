/** Key rotation, for admins: see the key manager's rotate() and keys/rotation-by-replacement.ts. */
import { enforceOnDeployment, type Principal } from '../auth/policy.js';
import { rotateByReplacement } from '../keys/rotation-by-replacement.js';
import type { RotationReport } from '../keys/key-manager.js';
import type { ControlPlane } from './control-plane.js';

export async function rotateKeys(cp: ControlPlane, actor: Principal): Promise<RotationReport> {
  enforceOnDeployment(actor, 'keys');
  return cp.keys.rotate ? cp.keys.rotate() : rotateByReplacement(cp.store, cp.keys);
}
