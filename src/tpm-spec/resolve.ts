/**
 * Spec resolution with Nova's semantics: a TPM can be asked for by explicit
 * options, by flavor extra specs (hw:tpm_*) and by image properties
 * (hw_tpm_*). Every source that speaks must agree; the version is required;
 * the model defaults to tpm-tis; tpm-crb exists only for TPM 2.0.
 */
import { InvalidArgumentError, SpecConflictError } from '../errors.js';
import { SECRET_SECURITY_FLAVOR_KEY } from './secret-security.js';
import {
  DEFAULT_TPM_MODEL,
  FLAVOR_KEYS,
  IMAGE_KEYS,
  TPM_MODELS,
  TPM_VERSIONS,
  isTpmModel,
  isTpmVersion,
  type TpmSpec,
} from './tpm-spec.js';

export interface SpecRequest {
  version?: string | undefined;
  model?: string | undefined;
  flavor?: Record<string, string> | undefined;
  image?: Record<string, string> | undefined;
}

type SourceName = 'request' | 'flavor' | 'image';

/** One source's say on one attribute, kept so that errors can name exactly who said what. */
interface SpecClaim {
  source: SourceName;
  key: string;
  value: string;
}

export interface ResolvedSpec {
  spec: TpmSpec;
  /** The claims the spec was resolved from; empty model claims mean the default applied. */
  claims: { version: SpecClaim[]; model: SpecClaim[] };
}

const describe = (c: SpecClaim): string =>
  c.source === 'request' ? `--${c.key} ${c.value}` : `${c.source} ${c.key}=${c.value}`;

/** Nova spells a flavor's extra specs with a colon and an image's properties with an underscore. */
const FLAVOR_SPELLING = /^(hw|os):/;
const IMAGE_SPELLING = /^(hw|os)_/;
const asImageKey = (flavorKey: string) => flavorKey.replace(':', '_');

function rejectUnknownTpmKeys(properties: Record<string, string>, source: 'flavor' | 'image'): void {
  const keys = source === 'flavor' ? FLAVOR_KEYS : IMAGE_KEYS;
  const prefix = source === 'flavor' ? 'hw:tpm_' : 'hw_tpm_';
  const known: string[] = [...Object.values(keys), ...(source === 'flavor' ? [SECRET_SECURITY_FLAVOR_KEY] : [])];
  for (const key of Object.keys(properties)) {
    if (key.startsWith(prefix) && !known.includes(key)) {
      throw new InvalidArgumentError(`${source}.${key}`, `a known TPM key (${known.join(', ')})`, key);
    }
  }
}

/**
 * A key of ours spelled as the other source spells it (`--flavor hw_tpm_version=1.2`) would be ignored
 * without a word: the request would get a TPM other than the one asked for.
 */
function rejectOtherSourcesSpelling(request: SpecRequest): void {
  const flavorKeys = [...Object.values(FLAVOR_KEYS), SECRET_SECURITY_FLAVOR_KEY, 'os:secure_boot'];
  const imageKeys = [...Object.values(IMAGE_KEYS), 'os_secure_boot', 'hw_firmware_type'];
  for (const key of Object.keys(request.flavor ?? {})) {
    if (IMAGE_SPELLING.test(key) && imageKeys.includes(key)) {
      const flavorKey = flavorKeys.find((k) => asImageKey(k) === key);
      throw new InvalidArgumentError(
        `flavor.${key}`,
        `a flavor extra spec${flavorKey ? ` (${flavorKey})` : ''}; ${key} is an image property: pass it with --image`,
        key,
      );
    }
  }
  for (const key of Object.keys(request.image ?? {})) {
    if (FLAVOR_SPELLING.test(key) && flavorKeys.includes(key)) {
      const imageKey = imageKeys.find((k) => k === asImageKey(key));
      throw new InvalidArgumentError(
        `image.${key}`,
        `an image property${imageKey ? ` (${imageKey})` : ''}; ${key} is a flavor extra spec: pass it with --flavor`,
        key,
      );
    }
  }
}

function collect(request: SpecRequest, attribute: 'version' | 'model'): SpecClaim[] {
  const claims: SpecClaim[] = [];
  const explicit = request[attribute];
  if (explicit !== undefined) claims.push({ source: 'request', key: attribute, value: explicit });
  const fromFlavor = request.flavor?.[FLAVOR_KEYS[attribute]];
  if (fromFlavor !== undefined) claims.push({ source: 'flavor', key: FLAVOR_KEYS[attribute], value: fromFlavor });
  const fromImage = request.image?.[IMAGE_KEYS[attribute]];
  if (fromImage !== undefined) claims.push({ source: 'image', key: IMAGE_KEYS[attribute], value: fromImage });
  return claims;
}

function fieldOf(claim: SpecClaim): string {
  return claim.source === 'request' ? claim.key : `${claim.source}.${claim.key}`;
}

function agree(attribute: 'version' | 'model', claims: SpecClaim[]): string | undefined {
  const first = claims[0];
  if (first === undefined) return undefined;
  if (claims.some((c) => c.value !== first.value)) {
    throw new SpecConflictError(
      `conflicting TPM ${attribute}: ${claims.map(describe).join(' vs ')}; make them agree or drop one`,
      claims,
    );
  }
  return first.value;
}

export function resolveTpmSpec(request: SpecRequest): ResolvedSpec {
  rejectOtherSourcesSpelling(request);
  if (request.flavor) rejectUnknownTpmKeys(request.flavor, 'flavor');
  if (request.image) rejectUnknownTpmKeys(request.image, 'image');

  const versionClaims = collect(request, 'version');
  const modelClaims = collect(request, 'model');
  for (const claim of versionClaims) {
    if (!isTpmVersion(claim.value))
      throw new InvalidArgumentError(fieldOf(claim), `a TPM version, one of ${TPM_VERSIONS.join(', ')}`, claim.value);
  }
  for (const claim of modelClaims) {
    if (!isTpmModel(claim.value))
      throw new InvalidArgumentError(fieldOf(claim), `a TPM model, one of ${TPM_MODELS.join(', ')}`, claim.value);
  }

  const version = agree('version', versionClaims);
  const model = agree('model', modelClaims) ?? DEFAULT_TPM_MODEL;
  if (version === undefined) {
    const hint =
      modelClaims.length > 0 ? ` (${modelClaims.map(describe).join(', ')} names a model but no version)` : '';
    throw new InvalidArgumentError(
      'version',
      `a TPM version from --version, flavor ${FLAVOR_KEYS.version} or image ${IMAGE_KEYS.version}, ` +
        `one of ${TPM_VERSIONS.join(', ')}${hint}`,
    );
  }
  if (!isTpmVersion(version) || !isTpmModel(model)) throw new Error('unreachable: values were validated above');

  if (model === 'tpm-crb' && version === '1.2') {
    const modelSource = modelClaims.map(describe).join(', ');
    throw new SpecConflictError(
      'model tpm-crb requires TPM version 2.0, but version 1.2 was requested: ' +
        `${modelSource} vs ${versionClaims.map(describe).join(', ')}`,
      [...modelClaims, ...versionClaims],
    );
  }
  return { spec: { version, model }, claims: { version: versionClaims, model: modelClaims } };
}
