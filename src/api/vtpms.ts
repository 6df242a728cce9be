/**
 * The wire shapes of vTPMs and their state, under /v1: one definition each,
 * used by the routes (validation, serialisation, OpenAPI), the CLI and the
 * tests. Types are the schemas' static types.
 */
import { type Static, Type } from '@sinclair/typebox';
import { HOST_NAME_PATTERN } from './patterns.js';

const properties = (description: string) => Type.Record(Type.String(), Type.String(), { description });

export const CreateBody = Type.Object(
  {
    vm: Type.String({ description: 'UUID of the VM the vTPM belongs to' }),
    version: Type.Optional(Type.String({ description: 'TPM version: 1.2 or 2.0' })),
    model: Type.Optional(Type.String({ description: 'TPM model: tpm-tis (default) or tpm-crb (2.0 only)' })),
    flavor: Type.Optional(properties('Flavor extra specs, e.g. hw:tpm_version, hw:tpm_model')),
    image: Type.Optional(
      properties('Image properties, e.g. hw_tpm_version, hw_tpm_model, hw_firmware_type, os_secure_boot'),
    ),
    firmware: Type.Optional(Type.String({ description: 'bios (default) or uefi' })),
    secure_boot: Type.Optional(Type.Boolean({ description: 'UEFI secure boot with Microsoft keys enrolled' })),
    secret_security: Type.Optional(
      Type.String({
        description:
          'user (default): only this project may use the secret; ' +
          'deployment: a vtpm-operator may too (flavor hw:tpm_secret_security)',
      }),
    ),
  },
  { additionalProperties: false },
);
export type CreateBody = Static<typeof CreateBody>;

export const UpdateBody = Type.Object(
  {
    secure_boot: Type.Boolean({
      description: 'turning it on or off resets the UEFI variable store to a fresh default',
    }),
  },
  { additionalProperties: false },
);

const vtpmFields = {
  vm: Type.String(),
  project: Type.String(),
  version: Type.String(),
  model: Type.String(),
  firmware: Type.String(),
  secure_boot: Type.Boolean(),
  host: Type.String(),
  status: Type.String({ description: 'creating, stopped, starting, running, migrating, stopping, deleting' }),
  secret_security: Type.String({ description: 'user or deployment' }),
  socket: Type.Union([Type.String(), Type.Null()]),
  spec_sources: Type.Unknown(),
  created_at: Type.String(),
  updated_at: Type.String(),
};
/** What the API shows of a vTPM: never its secret reference or sealed data. */
export const Vtpm = Type.Object(vtpmFields, { $id: 'Vtpm' });
export type VtpmView = Static<typeof Vtpm>;

const attachmentFields = {
  socket: Type.String({ description: 'unix socket of the vTPM on its host' }),
  qemu_args: Type.Array(Type.String(), { description: 'arguments to add to a QEMU command line' }),
  libvirt_xml: Type.String({ description: "libvirt <tpm> element with <backend type='external'>" }),
  libvirt_firmware_xml: Type.Union([Type.String(), Type.Null()], {
    description: 'UEFI guests: <loader> and <nvram> for the domain <os>',
  }),
};
export const Attachment = Type.Object(attachmentFields);
export type Attachment = Static<typeof Attachment>;

/** Start and stop are idempotent: asked for the state it is in, a vTPM is left as it is, and the answer says so. */
const unchangedField = {
  unchanged: Type.Optional(
    Type.Literal(true, { description: 'the vTPM already was in the state asked for: nothing was done' }),
  ),
};

export const Started = Type.Object({ ...vtpmFields, ...attachmentFields, ...unchangedField });
export type Started = Static<typeof Started>;

export const Stopped = Type.Object({ ...vtpmFields, ...unchangedField });
export type Stopped = Static<typeof Stopped>;

export const Migration = Type.Object({ ...vtpmFields, ...attachmentFields, from: Type.String(), to: Type.String() });
export type Migration = Static<typeof Migration>;

export const Restored = Type.Object({ ...vtpmFields, generation: Type.Integer() });
export type Restored = Static<typeof Restored>;

export const HostName = Type.String({ pattern: HOST_NAME_PATTERN, description: 'a host name as its agent reports it' });
export const MigrateBody = Type.Object({ to: HostName });

const DistinguishedName = (what: string) =>
  Type.Union([Type.String(), Type.Null()], {
    description: `the certificate's ${what}, e.g. CN=<VM UUID>; null if it is no X.509 certificate`,
  });
export const EkCertificate = Type.Object({
  key_type: Type.String(),
  pem: Type.String(),
  subject: DistinguishedName('subject (the VM for TPM 2.0; empty for TPM 1.2, as TCG has it)'),
  issuer: DistinguishedName("issuer (the deployment's CA)"),
});
export type EkCertificate = Static<typeof EkCertificate>;
export const EkCertificates = Type.Object({ certificates: Type.Array(EkCertificate) });

const Generation = Type.Object({
  generation: Type.Integer(),
  kind: Type.String({ description: 'tpm (TPM permanent state) or nvram (UEFI variable store)' }),
  size: Type.Integer(),
  digest: Type.String({ description: 'SHA-256 of the stored state, hex' }),
  reason: Type.String({ description: 'create, sync, stop, restore, import or adopt' }),
  created_at: Type.String(),
});
export type GenerationView = Static<typeof Generation>;
export const Generations = Type.Object({ generations: Type.Array(Generation) });

export const RestoreBody = Type.Object({ generation: Type.Integer({ minimum: 1 }) }, { additionalProperties: false });

export const ExportBody = Type.Object(
  {
    // Its length is checked by the operation, after authorisation: a caller who may not export is told that first.
    passphrase: Type.String({
      description: 'at least 12 characters; seals the bundle; give it to whoever imports it, separately from the file',
    }),
    generations: Type.Optional(
      Type.Union([Type.Integer({ minimum: 1 }), Type.Literal('all')], {
        description: 'newest generations of each kind to include (default 1)',
      }),
    ),
  },
  { additionalProperties: false },
);
export const Exported = Type.Object({ bundle: Type.String({ description: 'base64' }) });

export const ImportBody = Type.Object(
  {
    bundle: Type.String({ description: 'the bundle, base64' }),
    passphrase: Type.String(),
    vm: Type.Optional(Type.String({ description: 'import under this VM UUID instead of the exported one' })),
    original: Type.Optional(
      Type.Union([Type.Literal('clone'), Type.Literal('move')], {
        description:
          "when the bundle's VM still has its vTPM here: clone keeps both (two VMs share one EK), " +
          'move crypto-erases the original once the import is done; without it such an import is refused',
      }),
    ),
  },
  { additionalProperties: false },
);

export const AdoptBody = Type.Object(
  {
    vm: Type.String({ description: 'UUID of the VM the TPM belongs to' }),
    version: Type.String({ description: 'TPM version of the state: 1.2 or 2.0' }),
    model: Type.Optional(Type.String({ description: 'TPM model: tpm-tis (default) or tpm-crb (2.0 only)' })),
    source: Type.String({
      minLength: 1,
      maxLength: 300,
      description: 'where the TPM comes from, recorded with the vTPM, e.g. libvirt:DOMAIN',
    }),
    state: Type.String({
      minLength: 1,
      description: 'the swtpm permanent-state file as the other manager left it, base64',
    }),
    source_secret: Type.Optional(
      Type.String({
        minLength: 1,
        description: "the passphrase the other manager encrypted the state with (libvirt's secret value), base64",
      }),
    ),
  },
  { additionalProperties: false },
);

export const VmParams = Type.Object({ vm: Type.String({ description: 'VM UUID' }) });
export const DeleteQuery = Type.Object({
  force: Type.Optional(Type.Boolean({ default: false })),
  dry_run: Type.Optional(
    Type.Boolean({
      default: false,
      description: 'check that the delete would be allowed and could run now, and change nothing (204 if so)',
    }),
  ),
});

export const VtpmList = Type.Object({ vtpms: Type.Array(Type.Ref(Vtpm)) });
export type VtpmList = { vtpms: VtpmView[] };
