/**
 * Who may use a vTPM's secret, with Nova's names: flavor extra spec
 * hw:tpm_secret_security, or the request's own option. `user` (the default):
 * only the owning project; `deployment`: the deployment too, through the
 * vtpm-operator role (e.g. to start a VM while its owner is away). Nova's
 * `host` mode keeps the secret on the compute host; vtpm-manager's secrets
 * always live in its key manager, so that mode is refused.
 */
import { InvalidArgumentError, SpecConflictError } from '../errors.js';

export const SECRET_SECURITY_MODES = ['user', 'deployment'] as const;
export type SecretSecurity = (typeof SECRET_SECURITY_MODES)[number];

export const SECRET_SECURITY_FLAVOR_KEY = 'hw:tpm_secret_security';

export interface SecretSecurityRequest {
  secretSecurity?: string | undefined;
  flavor?: Record<string, string> | undefined;
}

function valid(field: string, value: string): SecretSecurity {
  if (value === 'host')
    throw new InvalidArgumentError(
      field,
      `one of ${SECRET_SECURITY_MODES.join(', ')} ` +
        '(vtpm-manager keeps every secret in its key manager, never on a host)',
      value,
    );
  if (!(SECRET_SECURITY_MODES as readonly string[]).includes(value))
    throw new InvalidArgumentError(field, `one of ${SECRET_SECURITY_MODES.join(', ')}`, value);
  return value as SecretSecurity;
}

export function resolveSecretSecurity(request: SecretSecurityRequest): SecretSecurity {
  const explicit = request.secretSecurity === undefined ? undefined : valid('secret_security', request.secretSecurity);
  const fromFlavor = request.flavor?.[SECRET_SECURITY_FLAVOR_KEY];
  const flavor = fromFlavor === undefined ? undefined : valid(`flavor.${SECRET_SECURITY_FLAVOR_KEY}`, fromFlavor);
  if (explicit !== undefined && flavor !== undefined && explicit !== flavor) {
    throw new SpecConflictError(
      `conflicting secret security: --secret-security ${explicit} vs flavor ${SECRET_SECURITY_FLAVOR_KEY}=${flavor}`,
      [
        { source: 'request', key: 'secret_security', value: explicit },
        { source: 'flavor', key: SECRET_SECURITY_FLAVOR_KEY, value: flavor },
      ],
    );
  }
  return explicit ?? flavor ?? 'user';
}
