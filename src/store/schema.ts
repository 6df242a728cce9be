/**
 * Table shapes as the SQL builder sees them, and the records the repositories
 * hand out: the same columns, under the same names, with only what SQL cannot
 * hold portably (booleans, JSON, lists) decoded. Timestamps are ISO-8601
 * strings in UTC.
 */
import type { Generated, Selectable } from 'kysely';

export type VtpmStatus = 'creating' | 'stopped' | 'starting' | 'running' | 'migrating' | 'stopping' | 'deleting';

export interface VtpmTable {
  vm: string;
  project: string;
  version: string;
  model: string;
  host: string;
  status: VtpmStatus;
  firmware: string;
  /** 0 or 1: portable across SQLite and PostgreSQL. */
  secure_boot: number;
  /** Key-manager reference of the vTPM's own secret; the secret never enters the database. */
  secret_ref: string;
  /** JSON of the claims (flavor, image, options) the spec was resolved from. */
  spec_claims: string;
  /** EK certificates, sealed under a key derived from the vTPM's secret. */
  ek_certificates: Buffer | null;
  socket: string | null;
  /** user: only the owning project may use the secret; deployment: a vtpm-operator may too. */
  secret_security: string;
  /** While `migrating`: the host the vTPM is moving to (`host` is where it runs until then). */
  migrating_to: string | null;
  /**
   * The swtpm process serving the vTPM while it runs (its host's id for that
   * launch): reports and exits of any other instance, late or replayed, are
   * not this vTPM's any more.
   */
  instance: string | null;
  /** While `migrating`: the destination's swtpm instance. */
  migrating_instance: string | null;
  created_at: string;
  updated_at: string;
}

export interface HostTable {
  name: string;
  /** JSON array of trait names. */
  traits: string;
  /** JSON of what the agent probed (swtpm and QEMU versions and features). */
  capabilities: string;
  last_seen: string;
  /** A remote agent's API (`vtpm agent`); null for the control plane's own host. */
  agent_url: string | null;
  /** Key-manager reference of the remote agent's credential. */
  agent_secret_ref: string | null;
  /** Set while an admin keeps new vTPMs off the host (`vtpm host disable`): why, in the admin's words. */
  disabled_reason: string | null;
  /** How many vTPMs the host's agent says it may hold (`--max-vtpms`); null: no limit. */
  max_vtpms: number | null;
  /** 1 while the host is drained (`vtpm host drain`): disabled, and its vTPMs are moving off it. */
  draining: Generated<number>;
}

export interface UserTable {
  name: string;
  project: string;
  /** Comma-separated: member, admin, vtpm-operator. */
  roles: string;
  created_at: string;
}

export interface ApiTokenTable {
  id: Generated<number>;
  user_name: string;
  /** SHA-256 of the token; the token itself is shown once and never stored. */
  token_hash: string;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
}

/** Append-only (database triggers), each entry hash-chained to the one before. */
interface AuditEventTable {
  seq: Generated<number>;
  at: string;
  actor: string;
  actor_project: string;
  operation: string;
  vm: string | null;
  /** The project of the vTPM acted on, when there is one. */
  project: string | null;
  /** ok, or the error code. */
  result: string;
  /** JSON; never secrets, tokens or state. */
  detail: string;
  previous_hash: string;
  hash: string;
}

interface SettingTable {
  key: string;
  value: string;
}

export const STATE_KINDS = ['tpm', 'nvram'] as const;
export type StateKind = (typeof STATE_KINDS)[number];
export type GenerationReason = 'create' | 'sync' | 'stop' | 'restore' | 'import' | 'adopt';

/** One encrypted copy of a vTPM's state; see src/vault for what binds it. */
export interface StateGenerationTable {
  vm: string;
  kind: StateKind;
  generation: number;
  previous_digest: string;
  /** SHA-256 of the plaintext, hex. */
  digest: string;
  size: number;
  reason: GenerationReason;
  /** The generation's data key, wrapped by the vTPM's key-encryption key. */
  wrapped_key: Buffer;
  ciphertext: Buffer;
  created_at: string;
}

/** The newest acknowledged generation of each vTPM and kind: what rollback is measured against. */
interface StateHeadTable {
  vm: string;
  kind: StateKind;
  generation: number;
  digest: string;
}

/** A TPM manufactured ahead of demand, waiting to be bound to a VM. */
export interface PoolEntryTable {
  id: string;
  version: string;
  secret_ref: string;
  /** swtpm's state, sealed under a key derived from the entry's secret. */
  state: Buffer;
  /** EK certificates, sealed the same way. */
  ek_certificates: Buffer;
  created_at: string;
}

/**
 * A secret stored anew in the key manager while its uses still name the old
 * one: a rotation by replacement under way.
 */
interface SecretReplacementTable {
  old_ref: string;
  new_ref: string;
  created_at: string;
}

export interface Database {
  vtpms: VtpmTable;
  hosts: HostTable;
  users: UserTable;
  api_tokens: ApiTokenTable;
  audit_events: AuditEventTable;
  settings: SettingTable;
  state_generations: StateGenerationTable;
  state_heads: StateHeadTable;
  pool_entries: PoolEntryTable;
  secret_replacements: SecretReplacementTable;
}

export type VtpmRecord = Omit<Selectable<VtpmTable>, 'secure_boot' | 'spec_claims'> & {
  secure_boot: boolean;
  spec_claims: unknown;
};
export type NewVtpm = Omit<VtpmRecord, 'created_at' | 'updated_at'>;
export type VtpmPatch = Partial<
  Pick<
    VtpmRecord,
    | 'status'
    | 'ek_certificates'
    | 'socket'
    | 'secure_boot'
    | 'host'
    | 'migrating_to'
    | 'instance'
    | 'migrating_instance'
  >
>;

export type HostRecord = Omit<Selectable<HostTable>, 'traits' | 'capabilities' | 'draining'> & {
  traits: string[];
  capabilities: unknown;
  draining: boolean;
};

export type UserRecord = Omit<Selectable<UserTable>, 'roles'> & { roles: string[] };
/** The hash stays in the database: nothing outside the store needs it once the token is issued. */
export type TokenRecord = Omit<Selectable<ApiTokenTable>, 'token_hash'>;

export type GenerationRecord = Selectable<StateGenerationTable>;
export type GenerationSummary = Omit<GenerationRecord, 'wrapped_key' | 'ciphertext'>;
export type NewGeneration = Omit<GenerationRecord, 'created_at'>;
export type StateHead = Pick<Selectable<StateHeadTable>, 'generation' | 'digest'>;

export type AuditEvent = Selectable<AuditEventTable>;
export type AuditRow = Omit<AuditEvent, 'seq'>;

export type PoolEntry = Omit<Selectable<PoolEntryTable>, 'created_at'>;
