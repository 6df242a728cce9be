/** What a vTPM is: the vocabulary shared by the API, the store, the agent and the hypervisor glue. */

export const TPM_VERSIONS = ['1.2', '2.0'] as const;
export type TpmVersion = (typeof TPM_VERSIONS)[number];

export const TPM_MODELS = ['tpm-tis', 'tpm-crb'] as const;
export type TpmModel = (typeof TPM_MODELS)[number];

export const DEFAULT_TPM_MODEL: TpmModel = 'tpm-tis';

export interface TpmSpec {
  version: TpmVersion;
  model: TpmModel;
}

/** Flavor extra specs and image properties use Nova's names. */
export const FLAVOR_KEYS = { version: 'hw:tpm_version', model: 'hw:tpm_model' } as const;
export const IMAGE_KEYS = { version: 'hw_tpm_version', model: 'hw_tpm_model' } as const;

/** Placement traits, named as in OpenStack's os-traits so that operators recognise them. */
export const TRAITS = {
  version: { '1.2': 'COMPUTE_SECURITY_TPM_1_2', '2.0': 'COMPUTE_SECURITY_TPM_2_0' },
  model: { 'tpm-tis': 'COMPUTE_SECURITY_TPM_TIS', 'tpm-crb': 'COMPUTE_SECURITY_TPM_CRB' },
} as const satisfies { version: Record<TpmVersion, string>; model: Record<TpmModel, string> };

export function requiredTraits(spec: TpmSpec): string[] {
  return [TRAITS.version[spec.version], TRAITS.model[spec.model]];
}

export function isTpmVersion(value: string): value is TpmVersion {
  return (TPM_VERSIONS as readonly string[]).includes(value);
}

export function isTpmModel(value: string): value is TpmModel {
  return (TPM_MODELS as readonly string[]).includes(value);
}
