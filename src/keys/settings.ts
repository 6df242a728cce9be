/**
 * The key manager backends by name and the defaults of their settings. `vtpm serve`'s options are defined
 * from these, so they live apart from the backends, which every other command would otherwise load.
 */
export const KEY_MANAGER_KINDS = ['local', 'pkcs11', 'barbican'] as const;

export const PKCS11_DEFAULTS = { token: 'vtpm-manager', keyLabel: 'vtpm-manager-kek' } as const;

/** The host TPM the local key manager seals its master key to, as a tpm2-tools TCTI. */
export const DEFAULT_HOST_TPM = 'device:/dev/tpmrm0';

/** Where the PKCS#11 token's user PIN may be given instead of a file (read once, then removed). */
export const PIN_ENVIRONMENT = 'VTPM_PKCS11_PIN';
