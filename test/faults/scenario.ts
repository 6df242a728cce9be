/**
 * One fault scenario: a fresh `vtpm serve` and a second host (`vtpm agent`
 * behind a fault proxy), a few vTPMs on both under continuous NV writes
 * (the host-side load client, and a real QEMU guest), faults injected at
 * random moments, then the invariants checked.
 *
 * Definitions (printed by main.ts too):
 * - a write is *acknowledged* to the guest when the TPM answered it;
 * - it is *safe* once a vault generation holding it is committed (it shows in
 *   the vTPM's history); which writes a generation holds is known by the
 *   digest of swtpm's state file recorded right after each write was answered;
 * - a write is *lost* when a promise covered it and a later start of the vTPM
 *   reads an older value: after a kill -9 of serve or of the agent, a
 *   restart, a clean stop, a guest's exit or a kill -9 of QEMU, the start
 *   must read the last value the TPM answered; after a kill -9 of swtpm, the
 *   last value the vault had committed;
 * - the *recovery point* of a kill: how far the vault was behind what the
 *   guest had been told, as the time between the answers of the two writes.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rename, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { readBundle } from '../../src/vault/bundle.js';
import { addProxyCounts, FAULT_WEIGHTS, type FaultKind, type Figures, type KillKind } from './figures.js';
import { buildGuestImage, type GuestImage, NvGuest } from './guest.js';
import { readValue, VtpmLoad } from './load.js';
import type { Prng } from './prng.js';
import { Refused, swtpmProcesses } from './processes.js';
import type { ProxyFault } from './proxy.js';
import { fillUp, free, lockDatabase } from './storage.js';
import { type GenerationJson, TrackedVtpm } from './tracked.js';
import { REMOTE_HOST, World } from './world.js';

export interface ScenarioOptions {
  /** The faults it may inject. */
  kinds: readonly FaultKind[];
  /** Faults still owed by the run (every kind at least once): drawn first, in random order, and removed. */
  owed: FaultKind[];
  /** A real QEMU guest on one of the vTPMs. */
  withGuest: boolean;
}

interface VtpmJson {
  vm: string;
  host: string;
  status: string;
  socket: string | null;
}

interface StartedJson extends VtpmJson {
  socket: string;
  qemu_args: string[];
}

const PASSPHRASE = 'fault-injection-suite';
const STOP_DEADLINE_MS = 45_000;
const CATCH_UP_MS = 30_000;
const START_DEADLINE_MS = 60_000;
const GUEST_BOOT_MS = 120_000;

export class Scenario {
  readonly violations: string[] = [];
  private readonly world: World;
  private readonly tracked = new Map<string, TrackedVtpm>();
  private image: GuestImage | undefined;
  private proxyHeal: NodeJS.Timeout | undefined;
  private guestWatch: NodeJS.Timeout | undefined;

  constructor(
    readonly name: string,
    private readonly prng: Prng,
    private readonly figures: Figures,
    private readonly log: (line: string) => void,
    private readonly options: ScenarioOptions,
  ) {
    this.world = new World(prng.fork());
  }

  private violation(message: string, vm?: string): void {
    // A check that runs again finds the same thing again: once is enough.
    if (this.violations.includes(message)) return;
    this.violations.push(message);
    this.log(`  VIOLATION: ${message}`);
    if (vm === undefined) return;
    const lines = this.world.logs.flatMap(({ log }) => log.split('\n')).filter((line) => line.includes(vm));
    for (const line of lines.length > 8 ? [...lines.slice(0, 3), '...', ...lines.slice(-5)] : lines)
      this.log(`    log: ${line.slice(0, 300)}`);
  }

  private note(message: string): void {
    if (!this.figures.notes.includes(message)) this.figures.notes.push(message);
    this.log(`    note: ${message}`);
  }

  private get serve() {
    return this.world.serve;
  }

  /** Interrupted (Ctrl-C): the processes go and the file systems are unmounted, whatever is under way. */
  async interrupt(): Promise<void> {
    this.healProxies();
    for (const tracked of this.tracked.values()) tracked.guest?.kill('SIGKILL');
    await this.world.tearDown([...this.tracked.keys()]);
  }

  async run(faultPhaseMs: number, mustFinishOwed: boolean): Promise<void> {
    try {
      await this.world.setUp();
      await this.setUpVtpms();
      const until = Date.now() + faultPhaseMs;
      while (Date.now() < until || (mustFinishOwed && this.nextOwed() !== undefined)) {
        await delay(this.prng.int(300, 2500));
        const kind = this.draw();
        this.figures.faults[kind] += 1;
        this.log(`  fault ${kind}`);
        await this.inject(kind);
        await this.checkProcesses();
      }
      this.healProxies();
      await this.finalChecks();
    } catch (error) {
      this.violation(`the scenario could not go on: ${(error as Error).stack ?? String(error)}`);
      const tail = this.world.logs.at(-1)?.log.slice(-3000);
      if (tail) this.log(`  last process's log (tail):\n${tail}`);
    } finally {
      clearInterval(this.guestWatch);
      this.healProxies();
      for (const tracked of this.tracked.values()) {
        tracked.takeGuestAcks();
        this.figures.writesAcknowledged += tracked.acknowledged.length;
        await tracked.load?.close().catch(() => undefined);
        tracked.guest?.kill('SIGKILL');
      }
      for (const proxy of this.world.proxies) addProxyCounts(this.figures, proxy.counts);
      if (this.violations.length > 0 || process.env.VTPM_FAULTS_KEEP_LOGS === '1') await this.keepLogs();
      await this.world.tearDown([...this.tracked.keys()]);
    }
  }

  /** Every process's whole log, for a failed scenario or when asked (its data directory goes). */
  private async keepLogs(): Promise<void> {
    const dir = await mkdtemp(join(tmpdir(), `vtpm-faults-${this.name.replace(/\W+/g, '-')}-logs-`));
    for (const [index, { name, log }] of this.world.logs.entries())
      await writeFile(join(dir, `${index + 1}-${name}.log`), log);
    this.log(`  the logs of every process it ran: ${dir}`);
  }

  private nextOwed(): FaultKind | undefined {
    return this.options.owed.find((k) => this.available(k));
  }

  /** kill-qemu needs the guest. */
  private available(kind: FaultKind): boolean {
    return this.options.kinds.includes(kind) && (kind !== 'kill-qemu' || this.guestVtpm() !== undefined);
  }

  private draw(): FaultKind {
    const owed = this.options.owed.filter((k) => this.available(k));
    if (owed.length > 0) {
      const kind = this.prng.pick(owed);
      this.options.owed.splice(this.options.owed.indexOf(kind), 1);
      return kind;
    }
    const weights = Object.fromEntries(
      this.options.kinds.filter((k) => this.available(k)).map((k) => [k, FAULT_WEIGHTS[k]]),
    ) as Record<FaultKind, number>;
    return this.prng.weighted(weights);
  }

  private guestVtpm(): TrackedVtpm | undefined {
    return [...this.tracked.values()].find((t) => t.kind === 'guest');
  }

  private loadVtpms(): TrackedVtpm[] {
    return [...this.tracked.values()].filter((t) => t.kind === 'load');
  }

  private async setUpVtpms(): Promise<void> {
    const count = this.prng.int(4, 6);
    // At least one on each host; the rest where the draw puts them.
    const hosts = Array.from({ length: count }, (_, i) =>
      i === 0 ? this.world.localHost : i === 1 ? REMOTE_HOST : this.pickHost(),
    );
    for (const host of hosts) {
      const vm = uuidFrom(this.prng);
      await this.serve.api('POST', '/vtpms', { vm, version: '2.0' });
      const tracked = new TrackedVtpm(vm, host, new VtpmLoad(vm, () => 10 + Math.floor(Math.random() * 40)));
      this.tracked.set(vm, tracked);
      await this.startAndRead(tracked, host);
    }
    const remote = hosts.filter((h) => h === REMOTE_HOST).length;
    this.log(`  ${count} vTPMs under NV write load (${remote} on ${REMOTE_HOST})`);
    if (!this.options.withGuest) return;
    this.image = await buildGuestImage(join(this.world.dir, 'guest'));
    const vm = uuidFrom(this.prng);
    await this.serve.api('POST', '/vtpms', { vm, version: '2.0' });
    const tracked = new TrackedVtpm(vm, this.pickHost(), undefined);
    this.tracked.set(vm, tracked);
    this.guestWatch = setInterval(() => tracked.takeGuestAcks(), 100);
    const read = await this.bootGuest(tracked, false);
    this.log(`  a QEMU guest writes NV values on ${tracked.host} (read ${read} at boot)`);
  }

  private pickHost(): string {
    return this.prng.next() < 0.5 ? this.world.localHost : REMOTE_HOST;
  }

  private stateDir(tracked: TrackedVtpm): string {
    return join(this.world.dataDirs.get(tracked.host)!, 'tpm', tracked.vm);
  }

  /**
   * Starts the vTPM (on `host`, or where it is), trying again while the start fails (the proxy's faults, a
   * host coming back), here or on the other host: what an operator or a scheduler does. Every try must leave
   * things consistent.
   */
  private async start(tracked: TrackedVtpm, host = tracked.host): Promise<StartedJson> {
    const deadline = Date.now() + START_DEADLINE_MS;
    for (let attempt = 1, on = host; ; attempt += 1) {
      try {
        const started = await this.serve.api<StartedJson>('POST', `/vtpms/${tracked.vm}/start`, { host: on });
        tracked.host = started.host;
        return started;
      } catch (error) {
        if (Date.now() > deadline)
          throw new Error(`${tracked.vm}: ${attempt} starts failed within ${START_DEADLINE_MS} ms: ${error}`);
        this.log(`    start of ${tracked.vm.slice(0, 8)} on ${on} failed: ${firstLine(String(error))}`);
        await delay(500 + 250 * attempt);
        on = this.pickHost();
      }
    }
  }

  /** Starts the vTPM, then the guest's view: the NV value the TPM holds now. Leaves the load writing again. */
  private async startAndRead(tracked: TrackedVtpm, host?: string, resume = true): Promise<number> {
    const { socket } = await this.start(tracked, host);
    const { channel, seq } = await readValue(socket);
    if (resume) await tracked.load!.run(channel, this.stateDir(tracked));
    else channel.close();
    return seq;
  }

  /** Boots the guest on its vTPM; resolves with the counter the boot read. */
  private async bootGuest(tracked: TrackedVtpm, readOnly: boolean, host?: string): Promise<number> {
    const started = await this.start(tracked, host);
    const guest = NvGuest.boot(this.image!, started.qemu_args, readOnly, readOnly ? GUEST_BOOT_MS : 24 * 3600_000);
    tracked.guest = guest;
    const deadline = Date.now() + GUEST_BOOT_MS;
    while (guest.read === undefined) {
      if (Date.now() > deadline) throw new Error(`the guest did not boot:\n${guest.console.slice(-2000)}`);
      await delay(100);
    }
    return guest.read;
  }

  private async inject(kind: FaultKind): Promise<void> {
    switch (kind) {
      case 'kill-serve':
        return this.killServe();
      case 'kill-swtpm':
        return this.killSwtpm(this.prng.pick(this.loadVtpms()));
      case 'kill-agent':
        return this.killAgent();
      case 'kill-qemu':
        return this.killQemu(this.guestVtpm()!);
      case 'keys-away':
        return this.keysAway(false);
      case 'keys-away-restart':
        return this.keysAway(true);
      case 'second-serve':
        return this.secondProcess('vtpm serve', () => this.world.secondServe());
      case 'second-agent':
        return this.secondProcess('vtpm agent', () => this.world.secondAgent());
      case 'proxy-delay':
      case 'proxy-drop':
      case 'proxy-duplicate':
      case 'proxy-replay':
        return this.proxyFault(kind.slice('proxy-'.length) as ProxyFault);
      case 'fs-full':
        return this.fileSystemFull();
      case 'db-locked':
        return this.databaseLocked();
    }
  }

  /** kill -9 of `vtpm serve`, down for a moment while the guests go on writing, then started on the same data. */
  private async killServe(): Promise<void> {
    const at = Date.now();
    await this.serve.kill9();
    await delay(this.prng.int(100, 3000));
    await this.world.startServe();
    await this.afterRecovery('after a restart of vtpm serve');
    await this.recordRecoveryPoints('kill-serve', at, this.loadVtpms());
  }

  /**
   * kill -9 of the remote host's agent: its swtpms go on. Sometimes a guest there goes away while the agent
   * is down; its vTPM must end stopped with the last state its TPM answered.
   */
  private async killAgent(): Promise<void> {
    const at = Date.now();
    const remote = this.loadVtpms().filter((t) => t.host === REMOTE_HOST && t.load!.running);
    await this.world.agent?.kill9();
    const leaving = remote.length > 0 && this.prng.next() < 0.5 ? this.prng.pick(remote) : undefined;
    if (leaving) {
      this.log(`    ${leaving.vm.slice(0, 8)}'s guest goes away while the agent is down`);
      await leaving.load!.close();
    }
    await delay(this.prng.int(100, 3000));
    await this.world.startAgent();
    if (leaving) await this.expectStoppedWithLastWrite(leaving, 'its guest left while its host agent was down');
    await this.afterRecovery('after a restart of vtpm agent');
    await this.recordRecoveryPoints(
      'kill-agent',
      at,
      remote.filter((t) => t !== leaving),
    );
  }

  /** The guest has gone: the vTPM ends `stopped`, and a start reads the last write its TPM answered. */
  private async expectStoppedWithLastWrite(tracked: TrackedVtpm, when: string): Promise<void> {
    if (!(await this.waitForStatus(tracked.vm, 'stopped', STOP_DEADLINE_MS))) {
      // As an operator would: stop it, then look at what its start reads.
      await this.serve.api('POST', `/vtpms/${tracked.vm}/stop`).catch(() => undefined);
    }
    await this.expectNoSwtpm(tracked.vm, `after ${when}`);
    await this.readHistory(tracked.vm);
    const last = tracked.load!.lastAnswered?.seq ?? 0;
    const read = await this.startAndRead(tracked, this.pickHost());
    this.expectRead(tracked, read, last, when);
  }

  private expectRead(tracked: TrackedVtpm, read: number, last: number, when: string): void {
    if (read < last) {
      this.figures.writesLost += tracked.acknowledged.filter((w) => w.seq > read && w.seq <= last).length;
      this.violation(
        `${tracked.vm}: after ${when} the start read value ${read}; the TPM had answered ${last}: writes lost`,
        tracked.vm,
      );
    }
    this.figures.writesChecked += tracked.checked(read);
  }

  /** For each vTPM, how far its vault was behind its guest at the moment of a kill (see TrackedVtpm). */
  private async recordRecoveryPoints(kind: KillKind, at: number, vtpms: TrackedVtpm[]): Promise<void> {
    for (const tracked of vtpms) {
      const history = await this.history(tracked.vm);
      this.figures.recoveryPointsMs[kind].push(tracked.recoveryPointAt(history, at));
    }
  }

  /**
   * kill -9 of one swtpm: the vTPM must end `stopped` with the last state the vault committed, and start
   * again from it (sometimes on the other host).
   */
  private async killSwtpm(tracked: TrackedVtpm): Promise<void> {
    const { vm, load } = tracked;
    const processes = (await this.swtpms()).filter((p) => p.vm === vm);
    if (processes.length !== 1) {
      this.violation(`${vm} is running with ${processes.length} swtpm processes before the kill`, vm);
      if (processes.length === 0) return;
    }
    await this.readHistory(vm);
    const committedBefore = tracked.newestCommittedValue();
    for (const { pid } of processes) process.kill(pid, 'SIGKILL');
    await load!.pause();
    const lastAnswered = load!.lastAnswered;
    if (!(await this.waitForStatus(vm, 'stopped', STOP_DEADLINE_MS))) return;
    await this.expectNoSwtpm(vm, 'after its swtpm was killed');
    await this.readHistory(vm);
    const headValue = this.headValue(tracked);
    const read = await this.startAndRead(tracked, this.prng.next() < 0.3 ? this.pickHost() : tracked.host);
    if (read < committedBefore)
      this.violation(
        `${vm}: after a kill -9 of its swtpm the start read value ${read}, older than ${committedBefore}, ` +
          'which the vault had committed before the kill',
        vm,
      );
    if (headValue !== undefined && read !== headValue)
      this.violation(`${vm}: the start read value ${read}, not ${headValue} of the vault's head`, vm);
    if (read > load!.lastSent) this.violation(`${vm}: the start read value ${read}, which was never written`, vm);
    const recovery = lastAnswered ? tracked.lagBehind(lastAnswered, read) : 0;
    this.figures.recoveryPointsMs['kill-swtpm'].push(recovery);
    this.figures.writesChecked += tracked.checked(read);
    this.log(
      `    ${vm.slice(0, 8)} on ${tracked.host}: read ${read} after the kill; last answered ` +
        `${lastAnswered?.seq ?? 0}, recovery point ${recovery} ms`,
    );
  }

  private headValue(tracked: TrackedVtpm): number | undefined {
    const head = tracked.headDigest();
    return head === undefined ? undefined : tracked.valueOf(head);
  }

  /**
   * kill -9 of the guest's QEMU: swtpm leaves with it, the vTPM ends `stopped` with its last state in the
   * vault, and the next boot reads the last value the guest was told was written.
   */
  private async killQemu(tracked: TrackedVtpm): Promise<void> {
    const guest = tracked.guest!;
    // At a random moment of its writing: once it wrote at least once since it booted.
    const deadline = Date.now() + 60_000;
    while ((tracked.acknowledged.at(-1)?.seq ?? 0) <= (guest.read ?? 0) && Date.now() < deadline) await delay(200);
    await delay(this.prng.int(0, 2000));
    const at = Date.now();
    guest.kill('SIGKILL');
    await guest.exited();
    tracked.takeGuestAcks();
    tracked.guest = undefined;
    const last = tracked.acknowledged.at(-1);
    if (!(await this.waitForStatus(tracked.vm, 'stopped', STOP_DEADLINE_MS))) return;
    await this.expectNoSwtpm(tracked.vm, 'after its QEMU was killed');
    await this.readHistory(tracked.vm);
    const read = await this.bootGuest(tracked, false, this.prng.next() < 0.3 ? this.pickHost() : tracked.host);
    this.expectRead(tracked, read, last?.seq ?? 0, 'a kill -9 of its QEMU');
    const recovery = last ? tracked.lagBehind(last, read) : 0;
    this.figures.recoveryPointsMs['kill-qemu'].push(recovery);
    this.log(
      `    ${tracked.vm.slice(0, 8)}: the guest killed ${Date.now() - at} ms ago; the next boot on ` +
        `${tracked.host} read ${read}, the guest had been told ${last?.seq ?? 0}`,
    );
  }

  /**
   * The key manager away for a moment: its secrets directory moved aside (root reads through chmod 000, so a
   * mode change would not take it away). With `restart`, `vtpm serve` is also killed and started meanwhile,
   * so no vault key is in memory and every report needs the key manager.
   */
  private async keysAway(restart: boolean): Promise<void> {
    const secrets = join(this.world.dataDir, 'keys', 'secrets');
    const away = `${secrets}.away`;
    if (restart) await this.serve.kill9();
    await rename(secrets, away);
    try {
      if (restart) {
        await this.world.startServe().catch((error: unknown) => {
          if (!(error instanceof Refused)) throw error;
          this.note(`vtpm serve refused to start while its key manager was away: ${firstLine(error.output)}`);
        });
      }
      if (this.world.serveRunning) {
        const vm = this.prng.pick([...this.tracked.keys()]);
        const ek = await this.serve.api('GET', `/vtpms/${vm}/ek`).then(
          () => true,
          () => false,
        );
        if (ek) this.violation(`the EK of ${vm} was read while the key manager was away`, vm);
        await this.serve
          .api('GET', '/vtpms')
          .catch((error: unknown) => this.violation(`the vTPM list failed while the key manager was away: ${error}`));
      }
      await delay(this.prng.int(500, 3000));
    } finally {
      if (existsSync(secrets)) {
        if ((await readdir(secrets)).length > 0) this.violation('secrets were written while the key manager was away');
        await rmdir(secrets).catch(() => undefined);
      }
      await rename(away, secrets);
    }
    if (!this.world.serveRunning) await this.world.startServe();
    await this.afterRecovery('after the key manager came back');
  }

  /** A second process on a data directory that is in use: it must refuse, and change nothing. */
  private async secondProcess(what: string, start: () => Promise<{ kill9(): Promise<void> }>): Promise<void> {
    try {
      const second = await start();
      this.violation(`a second ${what} started on a data directory in use`);
      await delay(this.prng.int(500, 2500));
      await second.kill9();
    } catch (error) {
      if (!(error instanceof Refused)) throw error;
      this.note(`a second ${what} on the same data directory refused: ${firstLine(error.output)}`);
    }
    await this.afterRecovery(`after a second ${what} was started on the same data directory`);
  }

  /** A fault of the traffic between the remote host and the control plane, for a while; the rest goes on. */
  private async proxyFault(fault: ProxyFault): Promise<void> {
    const forMs = this.prng.int(2000, 6000);
    this.log(`    for ${forMs} ms`);
    clearTimeout(this.proxyHeal);
    this.world.setProxyFault(fault);
    this.proxyHeal = setTimeout(() => this.world.setProxyFault(undefined), forMs);
  }

  private healProxies(): void {
    clearTimeout(this.proxyHeal);
    this.world.setProxyFault(undefined);
  }

  /** The control plane's data directory full for a moment, while the guests go on writing. */
  private async fileSystemFull(): Promise<void> {
    const filler = await fillUp(this.world.dataDir);
    try {
      const forMs = this.prng.int(2000, 8000);
      this.log(`    for ${forMs} ms`);
      await delay(forMs);
      if (this.world.serveRunning)
        await this.serve
          .api('GET', '/vtpms')
          .catch((error: unknown) => this.violation(`the vTPM list failed while the disk was full: ${error}`));
    } finally {
      await free(filler);
    }
    await this.restartIfGone('its data directory was full');
    await this.afterRecovery('after its data directory had space again');
  }

  /** Another connection holds the database's write lock for a while (longer than serve's busy timeout, at times). */
  private async databaseLocked(): Promise<void> {
    const lock = lockDatabase(this.world.dataDir);
    try {
      const forMs = this.prng.int(1000, 9000);
      this.log(`    for ${forMs} ms`);
      await delay(forMs);
    } finally {
      lock.release();
    }
    await this.restartIfGone('its database was locked');
    await this.afterRecovery('after the database lock was released');
  }

  /** serve should ride out the fault; if it had to exit, it must start again and have lost nothing. */
  private async restartIfGone(when: string): Promise<void> {
    if (this.world.serveRunning) return;
    this.note(`vtpm serve exited while ${when}: ${firstLine(this.world.logs.at(-1)?.log ?? '')}`);
    await this.world.startServe();
  }

  private async afterRecovery(when: string): Promise<void> {
    await this.expectAllRunning(when);
    await this.expectCaughtUp(when);
  }

  /** Every vTPM whose guest is writing is `running`. */
  private async expectAllRunning(when: string): Promise<void> {
    const list = await this.vtpms();
    for (const tracked of this.tracked.values()) {
      const status = list.find((v) => v.vm === tracked.vm)?.status;
      const writing = tracked.load ? tracked.load.running : tracked.guest !== undefined;
      if (writing && status !== 'running')
        this.violation(`${tracked.vm} is ${status} ${when}, its swtpm still serving`, tracked.vm);
    }
  }

  /** The vault catches up: each running vTPM's head reaches the write its guest was told last. */
  private async expectCaughtUp(when: string): Promise<void> {
    const deadline = Date.now() + CATCH_UP_MS;
    for (const tracked of this.loadVtpms()) {
      const last = tracked.load!.running ? tracked.load!.lastAnswered?.seq : undefined;
      if (last === undefined) continue;
      for (;;) {
        await this.readHistory(tracked.vm);
        if (tracked.newestCommittedValue() >= last) break;
        if (Date.now() > deadline) {
          this.violation(
            `${tracked.vm}: the vault did not take write ${last} within ${CATCH_UP_MS} ms ${when} ` +
              `(newest committed: ${tracked.newestCommittedValue()})`,
            tracked.vm,
          );
          break;
        }
        await delay(200);
      }
    }
  }

  private async vtpms(): Promise<VtpmJson[]> {
    return (await this.serve.api<{ vtpms: VtpmJson[] }>('GET', '/vtpms')).vtpms;
  }

  private history(vm: string): Promise<GenerationJson[]> {
    return this.serve
      .api<{ generations: GenerationJson[] }>('GET', `/vtpms/${vm}/generations`)
      .then((h) => h.generations);
  }

  /** Reads the vault's history of the vTPM and checks it against what was seen before. */
  private async readHistory(vm: string): Promise<void> {
    for (const problem of this.tracked.get(vm)!.observe(await this.history(vm)))
      this.violation(`${vm}: ${problem}`, vm);
  }

  private async waitForStatus(vm: string, status: string, deadlineMs: number): Promise<boolean> {
    const until = Date.now() + deadlineMs;
    let seen = '';
    while (Date.now() < until) {
      seen = (await this.serve.api<VtpmJson>('GET', `/vtpms/${vm}`)).status;
      if (seen === status) return true;
      await delay(100);
    }
    this.violation(`${vm} stayed ${seen} for ${deadlineMs} ms, expected ${status}`, vm);
    return false;
  }

  private swtpms() {
    return swtpmProcesses([...this.world.dataDirs.values()]);
  }

  private async expectNoSwtpm(vm: string, when: string): Promise<void> {
    const left = (await this.swtpms()).filter((p) => p.vm === vm);
    if (left.length > 0) this.violation(`${vm}: swtpm ${left.map((p) => p.pid).join(', ')} still runs ${when}`, vm);
  }

  /**
   * The API answers; no vTPM has two swtpm processes (on one host or on two), none runs on a host other than
   * its own, and none that is not running has one (no orphan).
   */
  private async checkProcesses(): Promise<void> {
    const list = await this.vtpms();
    const processes = await this.swtpms();
    const hostOf = new Map([...this.world.dataDirs].map(([host, dir]) => [dir, host]));
    for (const { vm, status, host } of list) {
      const mine = processes.filter((p) => p.vm === vm);
      const where = mine.map((p) => `${p.pid} on ${hostOf.get(p.dataDir)}`).join(', ');
      if (mine.length > 1) this.violation(`${vm} runs ${mine.length} swtpm processes: ${where}`, vm);
      if (status !== 'running' && mine.length > 0)
        this.violation(`${vm} is ${status} but swtpm ${where} runs for it (orphan)`, vm);
      if (status === 'running' && mine.some((p) => hostOf.get(p.dataDir) !== host))
        this.violation(`${vm} runs on ${host}, but swtpm ${where} serves it`, vm);
    }
  }

  /**
   * The guests go away (a clean stop, or the guest's exit), then every vTPM is checked: its whole history
   * decrypts (an export of every generation), and a new start reads the last write its TPM answered.
   */
  private async finalChecks(): Promise<void> {
    for (const tracked of this.tracked.values()) {
      const how = this.prng.next() < 0.5 ? 'a stop' : "the guest's exit";
      if (tracked.load) await this.finalCheckOfLoad(tracked, how);
      else await this.finalCheckOfGuest(tracked);
    }
    await this.checkProcesses();
  }

  private async finalCheckOfLoad(tracked: TrackedVtpm, how: string): Promise<void> {
    const { vm, load } = tracked;
    if (!load!.running) this.violation(`${vm}: the guest's writes stopped: ${String(load!.ended)}`, vm);
    await load!.pause();
    if (how === 'a stop') await this.serve.api('POST', `/vtpms/${vm}/stop`);
    await load!.close();
    if (!(await this.waitForStatus(vm, 'stopped', STOP_DEADLINE_MS))) return;
    await this.expectNoSwtpm(vm, `after ${how}`);
    await this.readHistory(vm);
    await this.verifyDecrypts(tracked);
    const headValue = this.headValue(tracked);
    const read = await this.startAndRead(tracked, undefined, false);
    this.expectRead(tracked, read, load!.lastAnswered?.seq ?? 0, how);
    if (headValue !== undefined && headValue !== read)
      this.violation(`${vm}: the start read ${read}, not ${headValue} of the vault's head`, vm);
    await this.waitForStatus(vm, 'stopped', STOP_DEADLINE_MS);
  }

  /** The guest shuts down; a new boot reads the last value it was told was written. */
  private async finalCheckOfGuest(tracked: TrackedVtpm): Promise<void> {
    const guest = tracked.guest;
    if (guest) {
      guest.kill('SIGTERM');
      await guest.exited();
      tracked.takeGuestAcks();
      tracked.guest = undefined;
    }
    if (!(await this.waitForStatus(tracked.vm, 'stopped', STOP_DEADLINE_MS))) return;
    await this.expectNoSwtpm(tracked.vm, "after its guest's shutdown");
    await this.readHistory(tracked.vm);
    await this.verifyDecrypts(tracked);
    const read = await this.bootGuest(tracked, true);
    await tracked.guest?.exited();
    tracked.guest = undefined;
    this.expectRead(tracked, read, tracked.acknowledged.at(-1)?.seq ?? 0, "its guest's shutdown, a new boot");
    await this.waitForStatus(tracked.vm, 'stopped', STOP_DEADLINE_MS);
  }

  /** Every generation in the vault decrypts: exported (which opens each one) and its digest matches. */
  private async verifyDecrypts(tracked: TrackedVtpm): Promise<void> {
    const { vm } = tracked;
    const { bundle } = await this.serve.api<{ bundle: string }>('POST', `/vtpms/${vm}/export`, {
      passphrase: PASSPHRASE,
      generations: 'all',
    });
    const opened = await readBundle(Buffer.from(bundle, 'base64'), PASSPHRASE);
    const exported = new Map(
      opened.generations
        .filter((g) => g.kind === 'tpm')
        .map((g) => [g.generation, createHash('sha256').update(g.data).digest('hex')]),
    );
    for (const [generation, digest] of tracked.seen()) {
      const found = exported.get(generation);
      if (found === undefined) this.violation(`${vm}: generation ${generation} is missing from the export`, vm);
      else if (found !== digest) this.violation(`${vm}: generation ${generation} decrypts to another digest`, vm);
      else this.figures.generationsVerified += 1;
    }
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
