import { InvalidArgumentError } from '../errors.js';
import type { KeyManager } from './key-manager.js';
import type { HostTpmOptions } from './local/host-tpm.js';
import { LocalKeyManager } from './local/local-key-manager.js';

export const KEY_MANAGER_KINDS = ['local'] as const;
export type KeyManagerKind = (typeof KEY_MANAGER_KINDS)[number];

export interface KeyManagerOptions {
  kind: string;
  dataDir: string;
  /** local: seal the master key to this TPM. */
  hostTpm?: HostTpmOptions | undefined;
}

export async function openKeyManager(options: KeyManagerOptions): Promise<KeyManager> {
  switch (options.kind) {
    case 'local':
      return LocalKeyManager.open(options.dataDir, options.hostTpm);
    default:
      throw new InvalidArgumentError('key-manager', `one of ${KEY_MANAGER_KINDS.join(', ')}`, options.kind);
  }
}

export type { KeyManager, SecretOwner } from './key-manager.js';
export { DEFAULT_HOST_TPM } from './local/host-tpm.js';
