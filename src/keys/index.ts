import { InvalidArgumentError } from '../errors.js';
import type { KeyManager } from './key-manager.js';
import { BarbicanKeyManager } from './barbican/barbican-key-manager.js';
import type { HostTpmOptions } from './local/host-tpm.js';
import { LocalKeyManager } from './local/local-key-manager.js';

export const KEY_MANAGER_KINDS = ['local', 'barbican'] as const;
export type KeyManagerKind = (typeof KEY_MANAGER_KINDS)[number];

export interface KeyManagerOptions {
  kind: string;
  dataDir: string;
  /** local: seal the master key to this TPM. */
  hostTpm?: HostTpmOptions | undefined;
  /** barbican: its API endpoint, e.g. http://barbican:9311 */
  barbicanUrl?: string | undefined;
}

export async function openKeyManager(options: KeyManagerOptions): Promise<KeyManager> {
  switch (options.kind) {
    case 'local':
      return LocalKeyManager.open(options.dataDir, options.hostTpm);
    case 'barbican':
      if (!options.barbicanUrl) throw new InvalidArgumentError('barbican-url', "Barbican's endpoint (e.g. http://barbican:9311) with --key-manager barbican");
      return new BarbicanKeyManager(options.barbicanUrl.replace(/\/+$/, ''));
    default:
      throw new InvalidArgumentError('key-manager', `one of ${KEY_MANAGER_KINDS.join(', ')}`, options.kind);
  }
}

export type { KeyManager, SecretOwner } from './key-manager.js';
export { DEFAULT_HOST_TPM } from './local/host-tpm.js';
