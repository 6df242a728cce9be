/**
 * Export bundles: a vTPM in one portable file, to move it to another
 * deployment or keep it outside the fleet. It holds the spec, the owner, the
 * EK certificates, the chosen state generations, and the vTPM's own secret
 * (swtpm's state is encrypted under it), all sealed with AES-256-GCM under a
 * key derived from a passphrase by scrypt (keys/passphrase-envelope.ts; the
 * header names the VM).
 * The passphrase travels separately from the file (see docs/vault.md).
 */
import { type TSchema, Type } from '@sinclair/typebox';
import { InvalidBundleError } from '../errors.js';
import { type EnvelopeFormat, openWithPassphrase, parsedAs, sealWithPassphrase } from '../keys/passphrase-envelope.js';
import { TPM_MODELS, TPM_VERSIONS } from '../tpm-spec/tpm-spec.js';

export interface BundleGeneration {
  kind: string;
  generation: number;
  reason: string;
  created_at: string;
  data: Buffer;
}

export interface BundlePayload {
  vm: string;
  project: string;
  version: string;
  model: string;
  firmware: string;
  secure_boot: boolean;
  secret: Buffer;
  ek_certificates: Array<{ key_type: string; der: Buffer }>;
  /** Oldest first, per kind. */
  generations: BundleGeneration[];
}

const b64 = (b: Buffer) => b.toString('base64');

function damaged(reason: string): InvalidBundleError {
  return new InvalidBundleError(`the bundle is not a readable vtpm-manager export: ${reason}`, { reason });
}

const BUNDLE: EnvelopeFormat<{ vm: TSchema }> = {
  magic: Buffer.from('VTPMBNDL'),
  fields: { vm: Type.String() },
  what: 'the bundle',
  damaged,
  notThisFormat: 'it does not start with the bundle signature',
  unauthenticated: () =>
    new InvalidBundleError(
      'the bundle failed authentication: the passphrase is wrong, or the file was truncated or altered',
    ),
};

export function writeBundle(payload: BundlePayload, passphrase: string): Promise<Buffer> {
  const plaintext = Buffer.from(
    JSON.stringify({
      ...payload,
      secret: b64(payload.secret),
      ek_certificates: payload.ek_certificates.map((c) => ({ key_type: c.key_type, der: b64(c.der) })),
      generations: payload.generations.map((g) => ({ ...g, data: b64(g.data) })),
    }),
  );
  return sealWithPassphrase(BUNDLE, { vm: payload.vm }, plaintext, passphrase);
}

const Base64 = Type.String({ pattern: '^[A-Za-z0-9+/]*={0,2}$' });
const literals = (values: readonly string[]): TSchema => Type.Union(values.map((value) => Type.Literal(value)));

/**
 * What an authenticated bundle must hold. Authentication proves only that whoever sealed it knew the
 * passphrase, and the caller chooses both: the content is input like any other.
 */
const PayloadSchema = Type.Object({
  vm: Type.String(),
  project: Type.String(),
  version: literals(TPM_VERSIONS),
  model: literals(TPM_MODELS),
  firmware: Type.String(),
  secure_boot: Type.Boolean(),
  secret: Type.String({ pattern: '^[A-Za-z0-9+/]{43}=$', description: '32 bytes' }),
  ek_certificates: Type.Array(Type.Object({ key_type: Type.String(), der: Base64 })),
  generations: Type.Array(
    Type.Object({
      kind: literals(['tpm', 'nvram']),
      generation: Type.Integer({ minimum: 1 }),
      reason: Type.String(),
      created_at: Type.String(),
      data: Base64,
    }),
  ),
});

export async function readBundle(bundle: Buffer, passphrase: string): Promise<BundlePayload> {
  const plaintext = await openWithPassphrase(BUNDLE, bundle, passphrase);
  const payload = parsedAs<
    Omit<BundlePayload, 'secret' | 'ek_certificates' | 'generations'> & {
      secret: string;
      ek_certificates: Array<{ key_type: string; der: string }>;
      generations: Array<Omit<BundleGeneration, 'data'> & { data: string }>;
    }
  >(plaintext.toString(), PayloadSchema, 'content', damaged);
  if (!payload.generations.some((g) => g.kind === 'tpm')) throw damaged('it holds no TPM state');
  return {
    ...payload,
    secret: Buffer.from(payload.secret, 'base64'),
    ek_certificates: payload.ek_certificates.map((c) => ({ key_type: c.key_type, der: Buffer.from(c.der, 'base64') })),
    generations: payload.generations.map((g) => ({ ...g, data: Buffer.from(g.data, 'base64') })),
  };
}
