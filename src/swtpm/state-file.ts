import type { TpmSpec } from '../tpm-spec/tpm-spec.js';

/** The file swtpm keeps a TPM's permanent state in, inside its state directory. */
export const stateFileName = (spec: TpmSpec): string => (spec.version === '2.0' ? 'tpm2-00.permall' : 'tpm-00.permall');
