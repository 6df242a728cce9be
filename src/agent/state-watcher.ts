/**
 * Notices every change of a state file: swtpm's, which swtpm writes to a
 * temporary file and renames over the state file, and a UEFI variable store,
 * which QEMU writes in place. A file-system notification for a matching name,
 * after a short debounce that folds the burst of events one write makes,
 * triggers one read. Changes are reported in order, each only after the
 * previous report finished, and only when the content really changed.
 *
 * A report that fails is tried again, with a growing pause, until the
 * control plane takes it or refuses it: the file holds the state meanwhile,
 * and each try reads it afresh, so a newer change replaces an older one that
 * was never taken. Each report names what it follows (`after`): the state the
 * control plane took last, and any sent since whose answer was lost; before it
 * is sent, these and it are recorded in the launch's lineage (lineage.ts), for
 * an agent that takes over after a crash.
 */
import { type FSWatcher, watch } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { VtpmError } from '../errors.js';
import { digestOf } from '../vault/state-vault.js';
import type { Lineage } from './lineage.js';

export interface WatchedFile {
  dir: string;
  file: string;
  /** Which notified names concern this file (swtpm's temporary file, for one). */
  matches: (name: string) => boolean;
  debounceMs: number;
}

export interface WatchedReport {
  data: Buffer;
  final: boolean;
  after: string[];
}

export interface WatcherEvents {
  /** A report was refused (the control plane decided: the state is not this host's to report). */
  refused(error: VtpmError): void;
  /** A report failed and will be tried again. */
  failed(error: unknown, retryInMs: number): void;
  /** The file system stopped notifying (inotify limits, say): the file is polled instead. */
  watchFailed(error: unknown): void;
  /** A notified change was taken, `lagMs` after it was first noticed (the sync lag the metrics show). */
  taken(lagMs: number): void;
}

const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 5_000;
const POLL_MS = 1_000;
/** Reports whose answer was lost, remembered as possible predecessors; more than this and the oldest go. */
const UNSURE_KEPT = 8;
const SENT_KEPT = 1024;

const isRefusal = (error: unknown) => error instanceof VtpmError && error.status < 500;

export class StateWatcher {
  private watcher: FSWatcher | undefined;
  private poller: NodeJS.Timeout | undefined;
  private timer: NodeJS.Timeout | undefined;
  private reporting: Promise<void> = Promise.resolve();
  /** The digest of the state the control plane took last. */
  private acknowledged: string | undefined;
  /** The last state refused: not reported again until the file changes. */
  private refused: string | undefined;
  private unsure: string[] = [];
  /**
   * Every state sent since the one taken last that may have been taken, beyond the few a report names: the
   * vault's refusal of a stale report names its head, which may be one of them.
   */
  private sent: string[] = [];
  private stopped = false;
  /** When the oldest change not yet taken was noticed. */
  private noticedAt: number | undefined;
  private retryMs = RETRY_FIRST_MS;
  private readonly abandon = new AbortController();

  /**
   * `initial`: what the host started swtpm with; without it, what an agent before this one recorded in
   * `lineage` is what the first report follows.
   */
  constructor(
    private readonly target: WatchedFile,
    private readonly report: (report: WatchedReport) => Promise<void>,
    private readonly events: WatcherEvents,
    initial?: Buffer,
    private readonly lineage?: Lineage,
  ) {
    if (initial) {
      this.acknowledged = digestOf(initial);
      lineage?.record([this.acknowledged]).catch(() => undefined);
    } else if (lineage && lineage.known.length > 0) {
      this.acknowledged = lineage.known[0];
      this.sent = lineage.known.slice(1, 1 + SENT_KEPT);
      this.unsure = this.sent.slice(-UNSURE_KEPT);
    }
  }

  start(): void {
    try {
      this.watcher = watch(this.target.dir, (_event, name) => {
        if (name !== null && !this.target.matches(name)) return;
        this.noticedAt ??= Date.now();
        this.soon(this.target.debounceMs);
      });
      this.watcher.on('error', (error) => this.poll(error));
    } catch (error) {
      this.poll(error);
    }
  }

  private poll(error: unknown): void {
    this.events.watchFailed(error);
    this.watcher?.close();
    this.watcher = undefined;
    if (!this.stopped && !this.poller) this.poller = setInterval(() => this.soon(0), POLL_MS);
  }

  private soon(ms: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.check().catch(() => undefined), ms);
  }

  /** Reads the file now and reports it if it changed; resolves once reported (or refused). */
  check(final = false): Promise<void> {
    this.reporting = this.reporting.catch(() => undefined).then(() => this.reportOnce(final));
    return this.reporting;
  }

  private async reportOnce(final: boolean): Promise<void> {
    const noticedAt = this.noticedAt;
    this.noticedAt = undefined;
    try {
      if ((await this.reportRead(final)) === 'taken' && noticedAt !== undefined)
        this.events.taken(Date.now() - noticedAt);
    } catch (error) {
      // Still not taken: its lag keeps counting from when it was first noticed.
      if (noticedAt !== undefined) this.noticedAt = Math.min(noticedAt, this.noticedAt ?? noticedAt);
      throw error;
    }
  }

  /** Reports the file's content unless unchanged; a refusal is an answer too (only failures throw). */
  private async reportRead(final: boolean): Promise<'taken' | 'unchanged' | 'refused'> {
    let data: Buffer;
    try {
      data = await readFile(join(this.target.dir, this.target.file));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'unchanged';
      throw error;
    }
    const digest = digestOf(data);
    if (digest === this.acknowledged || digest === this.refused) return 'unchanged';
    // Without a state known to be taken (a swtpm taken over with no lineage recorded) none is named.
    const after = this.acknowledged === undefined ? [] : [this.acknowledged, ...this.unsure];
    // Whatever the control plane holds once this is sent is among these; an unknown lineage stays unknown.
    if (after.length > 0)
      await this.lineage?.record([after[0]!, ...this.sent, ...(this.sent.includes(digest) ? [] : [digest])]);
    try {
      await this.report({ data, final, after });
    } catch (error) {
      const head = (error as VtpmError).details?.head;
      if (isRefusal(error) && typeof head === 'string' && this.sent.includes(head)) {
        // The vault took one of these, its answer lost, that this report no longer named: reported anew after it.
        this.settle(head);
        return this.reportRead(final);
      }
      if (isRefusal(error)) {
        // Not taken, so never named as a predecessor; only not sent again while the file holds it.
        this.events.refused(error as VtpmError);
        this.refused = digest;
        this.retryMs = RETRY_FIRST_MS;
        return 'refused';
      }
      const notSent = error instanceof VtpmError && error.code === 'unreachable';
      if (!notSent && !this.unsure.includes(digest)) {
        this.unsure = [...this.unsure, digest].slice(-UNSURE_KEPT);
        this.sent = [...this.sent, digest].slice(-SENT_KEPT);
      }
      this.events.failed(error, this.retryMs);
      if (!final) this.soon(this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
      throw error;
    }
    if (after.length === 0) await this.lineage?.record([digest]);
    this.settle(digest);
    return 'taken';
  }

  private settle(digest: string): void {
    this.acknowledged = digest;
    this.refused = undefined;
    this.unsure = [];
    this.sent = [];
    this.retryMs = RETRY_FIRST_MS;
  }

  /** Stops watching; pending reports still finish. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.poller);
    this.watcher?.close();
  }

  /**
   * Stops watching, then reports the final state, trying until the control
   * plane takes it: swtpm has exited, and its exit is reported only after.
   * Gives up only when the agent lets go of the host (abandon()); the file
   * stays, and the control plane recovers it when it next looks.
   */
  async close(): Promise<void> {
    this.stop();
    for (;;) {
      try {
        await this.check(true);
        return;
      } catch (error) {
        if (this.abandon.signal.aborted) throw error;
        await delay(this.retryMs, undefined, { signal: this.abandon.signal }).catch(() => undefined);
        if (this.abandon.signal.aborted) throw error;
      }
    }
  }

  /** The agent lets go of the host: a final report still being tried is given up. */
  abandonReports(): void {
    this.stop();
    this.abandon.abort();
  }
}
