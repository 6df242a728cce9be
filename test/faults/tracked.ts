/**
 * One vTPM of a scenario as the suite knows it: where it runs, what its
 * guest was told (the host-side load client's answered writes, or a QEMU
 * guest's acknowledged counter), and every generation seen in its vault
 * history, against which each later look at the history is checked.
 */
import type { NvGuest } from './guest.js';
import type { VtpmLoad } from './load.js';

export interface GenerationJson {
  generation: number;
  kind: string;
  digest: string;
  created_at: string;
}

/** A write the guest was told was done: its value and when the answer came. */
export interface Acknowledged {
  seq: number;
  at: number;
}

export class TrackedVtpm {
  /** Every tpm generation seen in the vault: number -> digest. */
  private readonly generations = new Map<number, string>();
  private head = 0;
  /** Writes up to this value have been read back after a restart. */
  private checkedUpTo = 0;
  /** The QEMU guest booted on it now, for a guest's vTPM. */
  guest: NvGuest | undefined;
  /** A guest's acknowledged writes over all its boots. */
  private readonly guestAcks: Acknowledged[] = [];

  constructor(
    readonly vm: string,
    /** The host it runs on, or last ran on. */
    public host: string,
    /** The host-side guest, for a vTPM under the load client. */
    readonly load: VtpmLoad | undefined,
  ) {}

  get kind(): 'load' | 'guest' {
    return this.load ? 'load' : 'guest';
  }

  get known(): number {
    return this.generations.size;
  }

  /** Every write its guest was told was done, over every launch, in order. */
  get acknowledged(): readonly Acknowledged[] {
    return this.load ? this.load.answered : this.guestAcks;
  }

  lastAcknowledgedBefore(at: number): Acknowledged | undefined {
    const acknowledged = this.acknowledged;
    for (let i = acknowledged.length - 1; i >= 0; i -= 1) if (acknowledged[i]!.at <= at) return acknowledged[i];
    return undefined;
  }

  /** The guest's acks the console has shown since the last look, with the time of the look. */
  takeGuestAcks(): void {
    const now = Date.now();
    for (const seq of this.guest?.newAcks() ?? []) this.guestAcks.push({ seq, at: now });
  }

  /** The value a state holds, when the load client saw that state (a guest's states are not seen). */
  valueOf(digest: string): number | undefined {
    return this.load?.valueOfDigest.get(digest);
  }

  /**
   * Takes in the vault's history; returns what it finds wrong: a generation once seen that vanished or
   * changed, a head that went back, a newer generation holding an older write than an earlier one.
   */
  observe(history: readonly GenerationJson[]): string[] {
    const problems: string[] = [];
    const present = new Map(history.filter((g) => g.kind === 'tpm').map((g) => [g.generation, g.digest]));
    for (const [generation, digest] of this.generations) {
      const now = present.get(generation);
      if (now === undefined) problems.push(`committed generation ${generation} vanished from the vault`);
      else if (now !== digest) problems.push(`generation ${generation} changed its digest`);
    }
    const head = Math.max(0, ...present.keys());
    if (head < this.head) problems.push(`the vault's head went back from ${this.head} to ${head}`);
    this.head = Math.max(head, this.head);
    for (const [generation, digest] of present) this.generations.set(generation, digest);
    let previous = 0;
    for (const generation of [...present.keys()].sort((a, b) => a - b)) {
      const value = this.valueOf(present.get(generation)!);
      if (value === undefined) continue;
      if (value < previous)
        problems.push(`generation ${generation} holds write ${value}, older than an earlier generation's`);
      previous = Math.max(previous, value);
    }
    return problems;
  }

  headDigest(): string | undefined {
    return this.generations.get(this.head);
  }

  /** The newest write a committed generation holds (0: none known). */
  newestCommittedValue(): number {
    let newest = 0;
    for (const digest of this.generations.values()) newest = Math.max(newest, this.valueOf(digest) ?? 0);
    return newest;
  }

  /** Every generation seen, for the check that each decrypts to its digest. */
  seen(): ReadonlyMap<number, string> {
    return this.generations;
  }

  /**
   * How far the vault was behind what the guest was told at `at`: the time from the answer of the newest
   * write a generation committed by then holds to the answer of the last write before then.
   */
  recoveryPointAt(history: readonly GenerationJson[], at: number): number {
    const last = this.lastAcknowledgedBefore(at);
    if (!last) return 0;
    let safe = 0;
    for (const g of history)
      if (g.kind === 'tpm' && Date.parse(g.created_at) <= at) safe = Math.max(safe, this.valueOf(g.digest) ?? 0);
    return this.lagBehind(last, safe);
  }

  /** The time between the answer of `last` and that of the write holding `value` (0 when it is not older). */
  lagBehind(last: Acknowledged, value: number): number {
    if (value >= last.seq) return 0;
    const acknowledged = this.acknowledged;
    const safe = acknowledged.find((w) => w.seq === value) ?? acknowledged[0]!;
    return Math.max(0, last.at - safe.at);
  }

  /** A start read `read`: the writes up to it are checked. Returns how many were newly checked. */
  checked(read: number): number {
    const last = this.acknowledged.at(-1)?.seq ?? 0;
    const upTo = Math.min(read, last);
    if (upTo <= this.checkedUpTo) return 0;
    const count = this.acknowledged.filter((w) => w.seq > this.checkedUpTo && w.seq <= upTo).length;
    this.checkedUpTo = upTo;
    return count;
  }
}
