import { InvalidArgumentError } from '../errors.js';
import { KEY_MANAGER_KINDS, PKCS11_DEFAULTS } from './settings.js';
import type { KeyManager } from './key-manager.js';
import { BarbicanKeyManager } from './barbican/barbican-key-manager.js';
import type { HostTpmOptions } from './local/host-tpm.js';
import { LocalKeyManager } from './local/local-key-manager.js';
import { readPin } from './pkcs11/pin.js';
import { Pkcs11KeyManager } from './pkcs11/pkcs11-key-manager.js';

export interface KeyManagerOptions {
  kind: string;
  dataDir: string;
  /** local: seal the master key to this TPM. */
  hostTpm?: HostTpmOptions | undefined;
  /** barbican: its API endpoint, e.g. https://barbican:9311 (http only on loopback) */
  barbicanUrl?: string | undefined;
  pkcs11?: Pkcs11Settings | undefined;
}

export interface Pkcs11Settings {
  /** The HSM vendor's PKCS#11 library. */
  module?: string | undefined;
  /** Label of the token to use. */
  token: string;
  /** File holding the user PIN (owner-only); without it, the environment's VTPM_PKCS11_PIN. */
  pinFile?: string | undefined;
  /** Label of this installation's key-encryption keys in the token. */
  keyLabel: string;
}

export async function openKeyManager(options: KeyManagerOptions): Promise<KeyManager> {
  switch (options.kind) {
    case 'local':
      return LocalKeyManager.open(options.dataDir, options.hostTpm);
    case 'barbican':
      if (!options.barbicanUrl)
        throw new InvalidArgumentError(
          '--barbican-url',
          "Barbican's endpoint (e.g. https://barbican:9311) with --key-manager barbican",
        );
      return new BarbicanKeyManager(options.barbicanUrl.replace(/\/+$/, ''));
    case 'pkcs11': {
      const settings: Pkcs11Settings = options.pkcs11 ?? PKCS11_DEFAULTS;
      if (!settings.module)
        throw new InvalidArgumentError(
          '--pkcs11-module',
          "the HSM's PKCS#11 library (e.g. /usr/lib/softhsm/libsofthsm2.so) with --key-manager pkcs11",
        );
      return Pkcs11KeyManager.open(options.dataDir, {
        module: settings.module,
        tokenLabel: settings.token,
        pin: await readPin(settings.pinFile),
        keyLabel: settings.keyLabel,
      });
    }
    default:
      throw new InvalidArgumentError('key-manager', `one of ${KEY_MANAGER_KINDS.join(', ')}`, options.kind);
  }
}

/** The file that holds the master key in plaintext under these options (local, not sealed to a TPM), if one does. */
export function plaintextMasterKeyFile(options: KeyManagerOptions): string | undefined {
  return options.kind === 'local' && !options.hostTpm ? LocalKeyManager.plaintextKeyFile(options.dataDir) : undefined;
}

export type { KeyManager, RotationReport } from './key-manager.js';
