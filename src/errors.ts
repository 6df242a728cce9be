/**
 * Every failure the product reports is a VtpmError: a stable machine-readable
 * code, the HTTP status the API answers with, and a message that says what was
 * wrong and what to do. The CLI maps the same codes to exit codes, so a script
 * can tell "not found" from "conflict" without parsing text.
 *
 * Messages and details must never carry secrets, TPM state or tokens.
 */

export type ErrorDetails = Record<string, unknown>;

export abstract class VtpmError extends Error {
  abstract readonly code: string;
  abstract readonly status: number;
  readonly details: ErrorDetails;

  constructor(message: string, details: ErrorDetails = {}) {
    super(message);
    this.name = new.target.name;
    this.details = details;
  }

  toJSON(): { code: string; message: string; details: ErrorDetails } {
    return { code: this.code, message: this.message, details: this.details };
  }
}

const SHOWN_CHARACTERS = 120;

/**
 * A received value as an error shows it: short, and never a structure of the caller's making, which can
 * be nested deeper than anything can serialise.
 */
function shown(received: unknown): unknown {
  if (typeof received === 'string')
    return received.length > SHOWN_CHARACTERS ? `${received.slice(0, SHOWN_CHARACTERS)}...` : received;
  if (received === null || typeof received === 'number' || typeof received === 'boolean') return received;
  return Array.isArray(received) ? '(an array)' : `(${typeof received === 'object' ? 'an object' : typeof received})`;
}

/** A field of a request has a value that is not accepted. */
export class InvalidArgumentError extends VtpmError {
  readonly code = 'invalid_argument';
  readonly status = 400;
  constructor(field: string, expected: string, received?: unknown) {
    const value = received === undefined ? undefined : shown(received);
    super(`${field}: expected ${expected}${value === undefined ? '' : ` (got ${JSON.stringify(value)})`}`, {
      field,
      expected,
      ...(value === undefined ? {} : { received: value }),
    });
  }
}

/** Two sources of the TPM spec (flavor, image, explicit options) disagree, or a combination is impossible. */
export class SpecConflictError extends VtpmError {
  readonly code = 'spec_conflict';
  readonly status = 400;
  constructor(message: string, conflicts: Array<{ source: string; key: string; value: string }>) {
    super(message, { conflicts });
  }
}

export class UnauthenticatedError extends VtpmError {
  readonly code = 'unauthenticated';
  readonly status = 401;
  constructor(
    message = 'missing or invalid API token: pass --token-file, set VTPM_TOKEN, ' +
      "or point --data-dir at the server's data directory",
  ) {
    super(message);
  }
}

export class ForbiddenError extends VtpmError {
  readonly code = 'forbidden';
  readonly status = 403;
}

export class NotFoundError extends VtpmError {
  readonly code = 'not_found';
  readonly status = 404;
  constructor(kind: string, id: string) {
    super(`${kind} ${id} not found`, { kind, id });
  }
}

/** The request is valid but the resource is in a state that does not allow it. */
export class StateConflictError extends VtpmError {
  readonly code = 'state_conflict';
  readonly status = 409;
}

export class AlreadyExistsError extends VtpmError {
  readonly code = 'already_exists';
  readonly status = 409;
  constructor(kind: string, id: string) {
    super(`${kind} ${id} already exists`, { kind, id });
  }
}

/** No host offers what the vTPM needs. */
/** Why the scheduler passed a host over. */
export type HostRefusal =
  | { name: string; reason: 'missing_trait'; missing: string[] }
  | { name: string; reason: 'not_connected'; missing: string[] }
  | { name: string; reason: 'down'; missing: string[]; since: string }
  | { name: string; reason: 'disabled' | 'draining'; missing: string[]; why: string }
  | { name: string; reason: 'full'; missing: string[]; vtpms: number; capacity: number };

export class NoValidHostError extends VtpmError {
  readonly code = 'no_valid_host';
  readonly status = 409;
  /** Why each host was ruled out (`no_host` when none is registered): what the metrics count. */
  readonly reasons: string[];
  constructor(requiredTraits: string[], hosts: HostRefusal[]) {
    const why =
      hosts.length === 0
        ? 'no host is registered'
        : hosts
            .map((h) =>
              h.reason === 'not_connected'
                ? `${h.name} has no agent connected to this control plane`
                : h.reason === 'down'
                  ? `${h.name} is down (its agent was last heard of at ${h.since})`
                  : h.reason === 'disabled' || h.reason === 'draining'
                    ? `${h.name} is ${h.reason} (${h.why})`
                    : h.reason === 'full'
                      ? `${h.name} is full (${h.vtpms} of ${h.capacity} vTPMs)`
                      : `${h.name} lacks ${h.missing.join(', ')}`,
            )
            .join('; ');
    super(`no host can run this vTPM (needs ${requiredTraits.join(', ')}): ${why}`, {
      required_traits: requiredTraits,
      hosts,
    });
    this.reasons = hosts.length === 0 ? ['no_host'] : hosts.map((h) => h.reason);
  }
}

/** swtpm or swtpm_setup failed; the message carries their diagnostic output, never key material. */
export class EmulatorError extends VtpmError {
  readonly code = 'emulator_failed';
  readonly status = 500;
}

export class KeyManagerError extends VtpmError {
  readonly code = 'key_manager_failed';
  readonly status = 500;
}

/** Stored data failed authentication: it was altered, truncated or belongs elsewhere. */
export class IntegrityError extends VtpmError {
  readonly code = 'integrity_failed';
  readonly status = 500;
}

/**
 * A bundle handed in for import cannot be imported: it is damaged, truncated, of another format, sealed
 * under another passphrase, or does not describe a vTPM. It is the caller's input, so a 4xx; the
 * service's own stored data failing the same way is an IntegrityError.
 */
export class InvalidBundleError extends VtpmError {
  readonly code = 'invalid_bundle';
  readonly status = 422;
}

/**
 * A deployment backup cannot be restored: it is damaged, truncated, of another format, or sealed under
 * another passphrase. Like a bundle, it is the caller's input.
 */
export class InvalidBackupError extends VtpmError {
  readonly code = 'invalid_backup';
  readonly status = 422;
}

/**
 * The database's schema is newer than this program knows: a newer version migrated it (a downgrade). Running
 * on a schema it does not understand could lose what the newer version stored, so this version stops.
 */
export class SchemaTooNewError extends VtpmError {
  readonly code = 'schema_too_new';
  readonly status = 500;
  constructor(
    where: string,
    found: { version: number; migration: string },
    known: { version: number; migration: string },
  ) {
    super(
      `${where} has schema version ${found.version} (${found.migration}), newer than this vtpm-manager knows ` +
        `(version ${known.version}, ${known.migration}): a newer version ran on it. Run that version again, ` +
        'or restore the backup taken before the upgrade (docs/operations.md, "Upgrade and rollback")',
      { found, known },
    );
  }
}

/** The newest stored generation is older than the newest acknowledged one: someone rolled the state back. */
export class RollbackError extends VtpmError {
  readonly code = 'rollback_detected';
  readonly status = 500;
}

/** A required program or system facility is missing or misconfigured on this host. */
export class HostSetupError extends VtpmError {
  readonly code = 'host_setup';
  readonly status = 500;
}

/** The database cannot take the request now (locked past its wait, or its disk full): try again later. */
export class DatabaseUnavailableError extends VtpmError {
  readonly code = 'database_unavailable';
  readonly status = 503;
}

/** `/readyz`: what the service needs does not answer (its details name each check's outcome). */
export class NotReadyError extends VtpmError {
  readonly code = 'not_ready';
  readonly status = 503;
}

/** The control plane could not be reached or answered with something that is not the API. */
export class UnreachableError extends VtpmError {
  readonly code = 'unreachable';
  readonly status = 503;
}

/** Too many failed authentications from one address: the caller waits before it tries again. */
export class TooManyRequestsError extends VtpmError {
  readonly code = 'too_many_requests';
  readonly status = 429;
}

export class InternalError extends VtpmError {
  readonly code = 'internal';
  readonly status = 500;
  constructor(message = 'internal error; see the server log') {
    super(message);
  }
}

/**
 * Exit codes of the CLI, one per error code, so that scripts can branch on them.
 * 1 stays for anything unexpected; 2 is invalid input, usage errors included.
 */
export const EXIT_CODES: Readonly<Record<string, number>> = {
  invalid_argument: 2,
  spec_conflict: 2,
  unauthenticated: 5,
  forbidden: 8,
  not_found: 3,
  state_conflict: 4,
  already_exists: 4,
  no_valid_host: 4,
  emulator_failed: 6,
  key_manager_failed: 6,
  integrity_failed: 6,
  invalid_bundle: 6,
  invalid_backup: 6,
  schema_too_new: 6,
  rollback_detected: 6,
  host_setup: 6,
  unreachable: 7,
  database_unavailable: 7,
  too_many_requests: 7,
  internal: 1,
};
