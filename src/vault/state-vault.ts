/**
 * The state vault: every vTPM's persistent state as numbered generations in
 * the database, each envelope-encrypted (AES-256-GCM under a fresh data key,
 * the data key wrapped by the vTPM's key-encryption key) and bound by its
 * associated data to the VM, the kind of state, its number and the digest of
 * the generation before it. A generation that fails authentication, belongs
 * to another VM or another number, or is older than the head (the newest
 * acknowledged generation) is refused and never handed to swtpm.
 *
 * The key-encryption key is derived from the vTPM's own secret, so deleting
 * that secret crypto-erases every generation too.
 */
import { createHash, hkdfSync, randomBytes } from 'node:crypto';
import { IntegrityError, NotFoundError, RollbackError, StateConflictError } from '../errors.js';
import { KEY_BYTES, open, seal } from '../keys/aead.js';
import { withWipedSync } from '../keys/wiped.js';
import {
  type GenerationReason,
  type GenerationRecord,
  type GenerationSummary,
  STATE_KINDS,
  type StateKind,
  type Store,
} from '../store/index.js';
import { generationsToPrune, type RetentionPolicy } from './retention.js';

/** The previous digest of generation 1. */
const GENESIS = '0'.repeat(64);

export const digestOf = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

export function vaultKeyFrom(secret: Buffer): Buffer {
  return Buffer.from(
    hkdfSync('sha256', secret, Buffer.alloc(0), 'vtpm-manager vault key-encryption key v1', KEY_BYTES),
  );
}

const dataAad = (vm: string, kind: StateKind, generation: number, previousDigest: string) =>
  `vtpm-manager/vault/v1/data/${vm}/${kind}/${generation}/${previousDigest}`;
const keyAad = (vm: string, kind: StateKind, generation: number) =>
  `vtpm-manager/vault/v1/data-key/${vm}/${kind}/${generation}`;

export interface StateGeneration {
  generation: number;
  digest: string;
  data: Buffer;
}

export class StateVault {
  /** `committed` hears of each generation written (the metrics count them by reason). */
  constructor(
    private readonly store: Store,
    private readonly retention: RetentionPolicy,
    private readonly committed: (reason: GenerationReason) => void = () => undefined,
  ) {}

  /**
   * Commits `data` as the next generation unless it equals the head. Returns
   * the new generation number, or undefined when nothing changed. Callers
   * serialise commits per VM; a lost race is reported, not retried blindly.
   * With `follows` (a host's report: the digests of the states it follows),
   * a state that follows none of them while the head has moved on is stale,
   * a replayed or late report, and refused: it would roll the vault back.
   */
  async commit(
    vm: string,
    kind: StateKind,
    vaultKey: Buffer,
    data: Buffer,
    reason: GenerationReason,
    follows?: readonly string[],
  ): Promise<number | undefined> {
    const head = await this.store.generations.head(vm, kind);
    const digest = digestOf(data);
    if (head?.digest === digest && (reason === 'sync' || reason === 'stop')) {
      // A guest that stopped after its last change: that generation is the run's last, and says so.
      if (reason === 'stop') await this.store.generations.markStopped(vm, kind, head.generation);
      return undefined;
    }
    if (head && follows && follows.length > 0 && !follows.includes(head.digest)) {
      throw new StateConflictError(
        `a report of VM ${vm}'s ${kind} state follows none of what the vault holds (head: generation ` +
          `${head.generation}): it is stale, and not taken`,
        { vm, kind, generation: head.generation },
      );
    }
    const generation = (head?.generation ?? 0) + 1;
    const previousDigest = head?.digest ?? GENESIS;
    const { ciphertext, wrappedKey } = withWipedSync(randomBytes(KEY_BYTES), (dataKey) => ({
      ciphertext: seal(dataKey, data, dataAad(vm, kind, generation, previousDigest)),
      wrappedKey: seal(vaultKey, dataKey, keyAad(vm, kind, generation)),
    }));
    const appended = await this.store.generations.append({
      vm,
      kind,
      generation,
      previous_digest: previousDigest,
      digest,
      size: data.length,
      reason,
      wrapped_key: wrappedKey,
      ciphertext,
    });
    if (!appended) {
      throw new RollbackError(
        `generation ${generation} of VM ${vm} (${kind}) lost a race with another writer; the vault head moved`,
        { vm, kind, generation },
      );
    }
    if (generation > this.retention.newest) await this.prune(vm, kind);
    this.committed(reason);
    return generation;
  }

  /** A run of the vTPM ended: the newest generation of each kind, if a `sync`, is marked `stop`. */
  async endRun(vm: string): Promise<void> {
    for (const kind of STATE_KINDS) {
      const head = await this.store.generations.head(vm, kind);
      if (head) await this.store.generations.markStopped(vm, kind, head.generation);
    }
  }

  private async prune(vm: string, kind: StateKind): Promise<void> {
    const generations = (await this.store.generations.list(vm)).filter((g) => g.kind === kind);
    const prune = generationsToPrune(generations, this.retention, new Date());
    if (prune.length > 0) await this.store.generations.remove(vm, kind, prune);
  }

  /** Opens one generation, checking everything that binds it. */
  async read(vm: string, kind: StateKind, generation: number, vaultKey: Buffer): Promise<StateGeneration> {
    const record = await this.store.generations.get(vm, kind, generation);
    if (!record) throw new NotFoundError(`generation ${generation} (${kind}) of VM`, vm);
    return this.openRecord(record, vaultKey);
  }

  private openRecord(record: GenerationRecord, vaultKey: Buffer): StateGeneration {
    const { vm, kind, generation } = record;
    const what = `generation ${generation} (${kind}) of VM ${vm}`;
    const data = withWipedSync(open(vaultKey, record.wrapped_key, keyAad(vm, kind, generation), what), (dataKey) =>
      open(dataKey, record.ciphertext, dataAad(vm, kind, generation, record.previous_digest), what),
    );
    if (digestOf(data) !== record.digest)
      throw new IntegrityError(`${what} does not match its recorded digest`, { vm, kind, generation });
    // The predecessor's digest is authenticated as part of this generation's associated data; the
    // predecessor row itself is not consulted, so a damaged old generation never blocks a newer one.
    return { generation, digest: record.digest, data };
  }

  /** The head generation, refusing a vault whose newest row is not the acknowledged head. */
  async newest(vm: string, kind: StateKind, vaultKey: Buffer): Promise<StateGeneration | undefined> {
    const head = await this.store.generations.head(vm, kind);
    if (!head) return undefined;
    // The newest stored row itself, read once: it is both the check against the head and the state handed out.
    const stored = await this.store.generations.newest(vm, kind);
    if (!stored || stored.generation !== head.generation) {
      throw new RollbackError(
        `the vault holds generation ${stored?.generation ?? 'none'} (${kind}) of VM ${vm} ` +
          `but generation ${head.generation} was acknowledged: its state was rolled back or deleted`,
        { vm, kind, acknowledged: head.generation, found: stored?.generation ?? null },
      );
    }
    const newest = this.openRecord(stored, vaultKey);
    if (newest.digest !== head.digest) {
      throw new RollbackError(
        `generation ${head.generation} (${kind}) of VM ${vm} is not the one that was acknowledged`,
        { vm, kind, generation: head.generation },
      );
    }
    return newest;
  }

  /** This vault over `store`, a transaction's (Store.transaction): its commits land with the rest of it. */
  within(store: Store): StateVault {
    return new StateVault(store, this.retention, this.committed);
  }

  history(vm: string): Promise<GenerationSummary[]> {
    return this.store.generations.list(vm);
  }

  async forget(vm: string, kind?: StateKind): Promise<void> {
    await this.store.generations.forget(vm, kind);
  }
}
