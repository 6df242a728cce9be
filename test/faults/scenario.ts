/**
 * One fault scenario: a fresh `vtpm serve` with a few vTPMs under continuous
 * NV writes, faults injected at random moments, then the invariants checked.
 *
 * Definitions (printed by main.ts too):
 * - a write is *acknowledged* to the guest when the TPM answered it;
 * - it is *safe* once a vault generation holding it is committed (it shows in
 *   `vtpm history`); which writes a generation holds is known by the digest
 *   of swtpm's state file recorded right after each write was answered;
 * - a write is *lost* when a promise covered it and a later start of the vTPM
 *   reads an older value: after a kill -9 of serve, a restart, a clean stop
 *   or a guest's exit, the start must read the last value the TPM answered;
 *   after a kill -9 of swtpm, the last value the vault had committed;
 * - the *recovery point* of a swtpm kill: the time between the answer of the
 *   last acknowledged write and the answer of the write the restart reads.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, rename, rm, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { readBundle } from '../../src/vault/bundle.js';
import { temporaryDir } from '../e2e/support/service.js';
import { readValue, VtpmLoad } from './load.js';
import type { Prng } from './prng.js';
import { Serve, ServeRefused, swtpmProcesses } from './processes.js';

export const FAULT_KINDS = ['kill-serve', 'kill-swtpm', 'keys-away', 'keys-away-restart', 'second-serve'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface Figures {
  faults: Record<FaultKind, number>;
  writesAcknowledged: number;
  writesChecked: number;
  writesLost: number;
  generationsVerified: number;
  recoveryPointsMs: number[];
  notes: string[];
}

export function emptyFigures(): Figures {
  return {
    faults: Object.fromEntries(FAULT_KINDS.map((k) => [k, 0])) as Record<FaultKind, number>,
    writesAcknowledged: 0,
    writesChecked: 0,
    writesLost: 0,
    generationsVerified: 0,
    recoveryPointsMs: [],
    notes: [],
  };
}

interface GenerationJson {
  generation: number;
  kind: string;
  digest: string;
  created_at: string;
}

interface Tracked {
  load: VtpmLoad;
  /** Every tpm generation seen in the vault: number -> digest. */
  generations: Map<number, string>;
  head: number;
  /** Writes up to this sequence number have been read back after a restart. */
  checkedUpTo: number;
}

const PASSPHRASE = 'fault-injection-suite';
const STOP_DEADLINE_MS = 45_000;
const CATCH_UP_MS = 30_000;

export class Scenario {
  private current: Serve | undefined;
  /** Every `vtpm serve` this scenario ran, for their logs. */
  private readonly servesRun: Serve[] = [];
  private readonly tracked = new Map<string, Tracked>();
  readonly violations: string[] = [];
  private dir = '';
  private dataDir = '';

  constructor(
    readonly name: string,
    private readonly prng: Prng,
    private readonly figures: Figures,
    private readonly log: (line: string) => void,
    private readonly kinds: readonly FaultKind[] = FAULT_KINDS,
  ) {}

  private violation(message: string, vm?: string): void {
    this.violations.push(message);
    this.log(`  VIOLATION: ${message}`);
    if (vm === undefined) return;
    const lines = this.servesRun.flatMap((serve) => serve.log.split('\n')).filter((line) => line.includes(vm));
    for (const line of lines.length > 6 ? [...lines.slice(0, 3), '...', ...lines.slice(-3)] : lines)
      this.log(`    serve log: ${line.slice(0, 400)}`);
  }

  private get serve(): Serve | undefined {
    return this.current;
  }

  private set serve(serve: Serve | undefined) {
    if (serve) this.servesRun.push(serve);
    this.current = serve;
  }

  private get service(): Serve {
    if (!this.serve) throw new Error('vtpm serve is not running');
    return this.serve;
  }

  async run(faultPhaseMs: number): Promise<void> {
    this.dir = await temporaryDir('vtpm-faults');
    this.dataDir = join(this.dir, 'data');
    try {
      this.serve = await Serve.start(this.dataDir);
      await this.setUp(this.prng.int(4, 6));
      const until = Date.now() + faultPhaseMs;
      while (Date.now() < until) {
        await delay(this.prng.int(300, 2500));
        const weights = { 'kill-serve': 3, 'kill-swtpm': 4, 'keys-away': 1, 'keys-away-restart': 1, 'second-serve': 1 };
        const kind = this.prng.weighted<FaultKind>(
          Object.fromEntries(this.kinds.map((k) => [k, weights[k]])) as Record<FaultKind, number>,
        );
        this.figures.faults[kind] += 1;
        this.log(`  fault ${kind}`);
        await this.inject(kind);
        await this.checkProcesses();
      }
      await this.finalChecks();
    } catch (error) {
      this.violation(`the scenario could not go on: ${(error as Error).stack ?? String(error)}`);
      if (this.serve) this.log(`  vtpm serve's log (tail):\n${this.serve.log.slice(-3000)}`);
    } finally {
      for (const { load } of this.tracked.values()) {
        this.figures.writesAcknowledged += load.answered.length;
        await load.close().catch(() => undefined);
      }
      await this.tearDown();
    }
  }

  private async setUp(count: number): Promise<void> {
    const vms = Array.from({ length: count }, () => uuidFrom(this.prng));
    for (const vm of vms) await this.service.json('create', '--vm', vm, '--version', '2.0');
    for (const vm of vms) {
      const load = new VtpmLoad(vm, join(this.dataDir, 'tpm', vm), () => 10 + Math.floor(Math.random() * 40));
      this.tracked.set(vm, { load, generations: new Map(), head: 0, checkedUpTo: 0 });
      await this.startAndRead(vm);
    }
    this.log(`  ${count} vTPMs running under NV write load`);
  }

  /** `vtpm start`, then the guest's view: the NV value the TPM holds now. Leaves the load writing again. */
  private async startAndRead(vm: string, resume = true): Promise<number> {
    const { socket } = await this.service.json<{ socket: string }>('start', vm);
    const { channel, seq } = await readValue(socket);
    if (resume) await this.tracked.get(vm)!.load.run(channel);
    else channel.close();
    return seq;
  }

  private async inject(kind: FaultKind): Promise<void> {
    switch (kind) {
      case 'kill-serve':
        return this.killServe();
      case 'kill-swtpm':
        return this.killSwtpm(this.prng.pick([...this.tracked.keys()]));
      case 'keys-away':
        return this.keysAway(false);
      case 'keys-away-restart':
        return this.keysAway(true);
      case 'second-serve':
        return this.secondServe();
    }
  }

  /** kill -9 of `vtpm serve`, down for a moment while the guests go on writing, then started on the same data. */
  private async killServe(): Promise<void> {
    await this.service.kill9();
    this.serve = undefined;
    await delay(this.prng.int(100, 3000));
    this.serve = await Serve.start(this.dataDir);
    await this.expectAllRunning('after a restart of vtpm serve');
    await this.expectCaughtUp('after a restart of vtpm serve');
  }

  /**
   * kill -9 of one swtpm: the vTPM must end `stopped` with the last state the vault committed, and start
   * again from it.
   */
  private async killSwtpm(vm: string): Promise<void> {
    const tracked = this.tracked.get(vm)!;
    const processes = (await swtpmProcesses(this.dataDir)).filter((p) => p.vm === vm);
    if (processes.length !== 1) {
      this.violation(`${vm} is running with ${processes.length} swtpm processes before the kill`, vm);
      if (processes.length === 0) return;
    }
    await this.readHistory(vm);
    const committedBefore = this.newestCommittedValue(tracked);
    for (const { pid } of processes) process.kill(pid, 'SIGKILL');
    await tracked.load.pause();
    const lastAnswered = tracked.load.lastAnswered;
    if (!(await this.waitForStatus(vm, 'stopped', STOP_DEADLINE_MS))) return;
    await this.expectNoSwtpm(vm, 'after its swtpm was killed');
    const head = await this.readHistory(vm);
    const headValue = head === undefined ? undefined : tracked.load.valueOfDigest.get(head);
    const read = await this.startAndRead(vm);
    if (read < committedBefore)
      this.violation(
        `${vm}: after a kill -9 of its swtpm the start read value ${read}, older than ${committedBefore}, ` +
          'which the vault had committed before the kill',
        vm,
      );
    if (headValue !== undefined && read !== headValue)
      this.violation(`${vm}: the start read value ${read}, not ${headValue} of the vault's head`, vm);
    if (read > tracked.load.lastSent)
      this.violation(`${vm}: the start read value ${read}, which was never written`, vm);
    const recovery =
      lastAnswered === undefined || read >= lastAnswered.seq
        ? 0
        : lastAnswered.at - (tracked.load.answerOf(read)?.at ?? tracked.load.answered[0]!.at);
    this.figures.recoveryPointsMs.push(recovery);
    this.countChecked(tracked, read);
    this.log(
      `    ${vm.slice(0, 8)}: read ${read} after the kill; last answered ${lastAnswered?.seq ?? 0}, ` +
        `recovery point ${recovery} ms`,
    );
  }

  /**
   * The key manager away for a moment: its secrets directory moved aside (root reads through chmod 000, so a
   * mode change would not take it away). With `restart`, `vtpm serve` is also killed and started meanwhile,
   * so no vault key is in memory and every report needs the key manager.
   */
  private async keysAway(restart: boolean): Promise<void> {
    const secrets = join(this.dataDir, 'keys', 'secrets');
    const away = `${secrets}.away`;
    if (restart) {
      await this.service.kill9();
      this.serve = undefined;
    }
    await rename(secrets, away);
    try {
      if (restart) {
        try {
          this.serve = await Serve.start(this.dataDir);
        } catch (error) {
          if (!(error instanceof ServeRefused)) throw error;
          this.note(`vtpm serve refused to start while its key manager was away: ${firstLine(error.output)}`);
        }
      }
      if (this.serve) {
        const vm = this.prng.pick([...this.tracked.keys()]);
        const ek = await this.serve.cli('ek', vm);
        if (ek.code === 0) this.violation(`vtpm ek ${vm} answered while the key manager was away`, vm);
        const list = await this.serve.cli('list');
        if (list.code !== 0) this.violation(`vtpm list failed while the key manager was away: ${list.stderr.trim()}`);
      }
      await delay(this.prng.int(500, 3000));
    } finally {
      if (existsSync(secrets)) {
        if ((await readdir(secrets)).length > 0) this.violation('secrets were written while the key manager was away');
        await rmdir(secrets).catch(() => undefined);
      }
      await rename(away, secrets);
    }
    if (!this.serve) this.serve = await Serve.start(this.dataDir);
    await this.expectAllRunning('after the key manager came back');
    await this.expectCaughtUp('after the key manager came back');
  }

  /** A second `vtpm serve` on the same data directory: it must refuse, or at least corrupt nothing. */
  private async secondServe(): Promise<void> {
    let second: Serve | undefined;
    try {
      second = await Serve.start(this.dataDir, 20_000);
    } catch (error) {
      if (!(error instanceof ServeRefused)) throw error;
      this.note(`a second vtpm serve on the same data directory refused: ${firstLine(error.output)}`);
      return;
    }
    this.note('a second vtpm serve started on the same data directory (no refusal; checked for corruption)');
    await delay(this.prng.int(500, 2500));
    await second.kill9();
    await this.expectAllRunning('after a second vtpm serve ran on the same data directory');
    await this.expectCaughtUp('after a second vtpm serve ran on the same data directory');
  }

  private note(message: string): void {
    if (!this.figures.notes.includes(message)) this.figures.notes.push(message);
    this.log(`    note: ${message}`);
  }

  /** Every vTPM whose guest is writing is `running`, and answers `vtpm list`. */
  private async expectAllRunning(when: string): Promise<void> {
    const list = await this.service.json<Array<{ vm: string; status: string }>>('list');
    for (const [vm, { load }] of this.tracked) {
      const status = list.find((v) => v.vm === vm)?.status;
      if (load.running && status !== 'running')
        this.violation(`${vm} is ${status} ${when}, its swtpm still serving`, vm);
    }
  }

  /** The vault catches up: each running vTPM's head reaches the write its guest was told last. */
  private async expectCaughtUp(when: string): Promise<void> {
    const targets = [...this.tracked].flatMap(([vm, t]) =>
      t.load.running && t.load.lastAnswered ? [{ vm, seq: t.load.lastAnswered.seq }] : [],
    );
    const deadline = Date.now() + CATCH_UP_MS;
    for (const { vm, seq } of targets) {
      const tracked = this.tracked.get(vm)!;
      for (;;) {
        await this.readHistory(vm);
        if (this.newestCommittedValue(tracked) >= seq) break;
        if (Date.now() > deadline) {
          this.violation(
            `${vm}: the vault did not take write ${seq} within ${CATCH_UP_MS} ms ${when} ` +
              `(newest committed: ${this.newestCommittedValue(tracked)})`,
            vm,
          );
          break;
        }
        await delay(200);
      }
    }
  }

  /**
   * Reads the vault's history of the vTPM: a generation once seen never changes digest or disappears
   * (retention is unbounded here), and the head never goes back. Returns the head's digest.
   */
  private async readHistory(vm: string): Promise<string | undefined> {
    const tracked = this.tracked.get(vm)!;
    const history = (await this.service.json<GenerationJson[]>('history', vm)).filter((g) => g.kind === 'tpm');
    const present = new Map(history.map((g) => [g.generation, g.digest]));
    for (const [generation, digest] of tracked.generations) {
      const now = present.get(generation);
      if (now === undefined) this.violation(`${vm}: committed generation ${generation} vanished from the vault`, vm);
      else if (now !== digest) this.violation(`${vm}: generation ${generation} changed its digest`, vm);
    }
    const head = Math.max(0, ...present.keys());
    if (head < tracked.head) this.violation(`${vm}: the vault's head went back from ${tracked.head} to ${head}`, vm);
    tracked.head = Math.max(head, tracked.head);
    for (const [generation, digest] of present) tracked.generations.set(generation, digest);
    // Generations hold increasing values: a newer one holding an older write is a rollback.
    let previous = 0;
    for (const generation of [...present.keys()].sort((a, b) => a - b)) {
      const value = tracked.load.valueOfDigest.get(present.get(generation)!);
      if (value === undefined) continue;
      if (value < previous)
        this.violation(`${vm}: generation ${generation} holds write ${value}, older than an earlier generation's`, vm);
      previous = Math.max(previous, value);
    }
    return present.get(head);
  }

  private newestCommittedValue(tracked: Tracked): number {
    let newest = 0;
    for (const digest of tracked.generations.values())
      newest = Math.max(newest, tracked.load.valueOfDigest.get(digest) ?? 0);
    return newest;
  }

  private countChecked(tracked: Tracked, read: number): void {
    const upTo = Math.min(read, tracked.load.lastAnswered?.seq ?? 0);
    if (upTo > tracked.checkedUpTo) {
      this.figures.writesChecked += tracked.load.answered.filter(
        (w) => w.seq > tracked.checkedUpTo && w.seq <= upTo,
      ).length;
      tracked.checkedUpTo = upTo;
    }
  }

  private async waitForStatus(vm: string, status: string, deadlineMs: number): Promise<boolean> {
    const until = Date.now() + deadlineMs;
    let seen = '';
    while (Date.now() < until) {
      seen = (await this.service.json<{ status: string }>('show', vm)).status;
      if (seen === status) return true;
      await delay(100);
    }
    this.violation(`${vm} stayed ${seen} for ${deadlineMs} ms, expected ${status}`, vm);
    return false;
  }

  private async expectNoSwtpm(vm: string, when: string): Promise<void> {
    const left = (await swtpmProcesses(this.dataDir)).filter((p) => p.vm === vm);
    if (left.length > 0) this.violation(`${vm}: swtpm ${left.map((p) => p.pid).join(', ')} still runs ${when}`, vm);
  }

  /** No vTPM has two swtpm processes, and none that is not running has one (no orphan). */
  private async checkProcesses(): Promise<void> {
    const list = await this.service.json<Array<{ vm: string; status: string }>>('list');
    const processes = await swtpmProcesses(this.dataDir);
    for (const { vm, status } of list) {
      const mine = processes.filter((p) => p.vm === vm);
      if (mine.length > 1) this.violation(`${vm} runs ${mine.length} swtpm processes`, vm);
      if (status !== 'running' && mine.length > 0)
        this.violation(`${vm} is ${status} but swtpm ${mine.map((p) => p.pid).join(', ')} runs for it (orphan)`, vm);
    }
  }

  /**
   * The guests go away (a clean `vtpm stop`, or the guest's exit), then every vTPM is checked: its whole
   * history decrypts (export of every generation), and a new start reads the last write the TPM answered.
   */
  private async finalChecks(): Promise<void> {
    for (const [vm, tracked] of this.tracked) {
      const { load } = tracked;
      if (!load.running) this.violation(`${vm}: the guest's writes stopped: ${String(load.ended)}`, vm);
      const how = this.prng.next() < 0.5 ? 'vtpm stop' : "the guest's exit";
      await load.pause();
      if (how === 'vtpm stop') await this.service.json('stop', vm);
      await load.close();
      if (!(await this.waitForStatus(vm, 'stopped', STOP_DEADLINE_MS))) continue;
      await this.expectNoSwtpm(vm, `after ${how}`);
      const head = await this.readHistory(vm);
      await this.verifyDecrypts(vm, tracked);
      const last = load.lastAnswered?.seq ?? 0;
      const read = await this.startAndRead(vm, false);
      const headValue = head === undefined ? undefined : load.valueOfDigest.get(head);
      if (read < last) {
        this.figures.writesLost += load.answered.filter((w) => w.seq > read).length;
        this.violation(
          `${vm}: after ${how} the start read value ${read}; the TPM had answered ${last}: writes lost`,
          vm,
        );
      }
      if (headValue !== undefined && headValue !== read)
        this.violation(`${vm}: the start read ${read}, not ${headValue} of the vault's head`, vm);
      this.countChecked(tracked, read);
      await this.waitForStatus(vm, 'stopped', STOP_DEADLINE_MS);
    }
    await this.checkProcesses();
  }

  /** Every generation in the vault decrypts: exported (which opens each one) and its digest matches. */
  private async verifyDecrypts(vm: string, tracked: Tracked): Promise<void> {
    const out = join(this.dir, `${vm}.vtpm`);
    const passphraseFile = join(this.dir, 'passphrase');
    await writeFile(passphraseFile, PASSPHRASE, { mode: 0o600 });
    await this.service.json('export', vm, '--out', out, '--generations', 'all', '--passphrase-file', passphraseFile);
    const bundle = await readBundle(await readFile(out), PASSPHRASE);
    const exported = new Map(
      bundle.generations
        .filter((g) => g.kind === 'tpm')
        .map((g) => [g.generation, createHash('sha256').update(g.data).digest('hex')]),
    );
    for (const [generation, digest] of tracked.generations) {
      const found = exported.get(generation);
      if (found === undefined) this.violation(`${vm}: generation ${generation} is missing from the export`, vm);
      else if (found !== digest) this.violation(`${vm}: generation ${generation} decrypts to another digest`, vm);
      else this.figures.generationsVerified += 1;
    }
  }

  private async tearDown(): Promise<void> {
    if (this.serve && !this.serve.exited) {
      for (const vm of this.tracked.keys()) await this.serve.cli('delete', '--force', vm);
      await this.serve.stop();
    }
    for (const { pid } of await swtpmProcesses(this.dataDir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}

function firstLine(text: string): string {
  const lines = text.trim().split('\n');
  return (lines.find((l) => l.startsWith('vtpm:')) ?? lines.at(-1) ?? '').slice(0, 200);
}

/** A UUID drawn from the scenario's PRNG, so that a replay uses the same VMs. */
function uuidFrom(prng: Prng): string {
  const bytes = Buffer.from(Array.from({ length: 16 }, () => prng.int(0, 255)));
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
