/**
 * Notices every change of a state file: swtpm's, which swtpm writes to a
 * temporary file and renames over the state file, and a UEFI variable store,
 * which QEMU writes in place. A file-system notification for a matching name,
 * after a short debounce that folds the burst of events one write makes,
 * triggers one read. Changes are reported in order,
 * each only after the previous report finished, and only when the content
 * really changed.
 */
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { digestOf } from '../vault/state-vault.js';

export interface WatchedFile {
  dir: string;
  file: string;
  /** Which notified names concern this file (swtpm's temporary file, for one). */
  matches: (name: string) => boolean;
  debounceMs: number;
}

export class StateWatcher {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private reporting: Promise<void> = Promise.resolve();
  private lastDigest: string | undefined;

  constructor(
    private readonly target: WatchedFile,
    private readonly report: (data: Buffer, final: boolean) => Promise<void>,
    initial?: Buffer,
  ) {
    this.lastDigest = initial && digestOf(initial);
  }

  start(): void {
    this.watcher = watch(this.target.dir, (_event, name) => {
      if (name !== null && !this.target.matches(name)) return;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => void this.check().catch(() => undefined), this.target.debounceMs);
    });
  }

  /** Reads the file now and reports it if it changed; resolves once reported. */
  check(final = false): Promise<void> {
    // A failed report is the reporter's to log; the next change still gets reported.
    this.reporting = this.reporting
      .catch(() => undefined)
      .then(async () => {
        let data: Buffer;
        try {
          data = await readFile(join(this.target.dir, this.target.file));
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
          throw error;
        }
        const digest = digestOf(data);
        if (digest === this.lastDigest) return;
        await this.report(data, final);
        this.lastDigest = digest;
      });
    return this.reporting;
  }

  /** Stops watching; pending reports still finish. */
  stop(): void {
    clearTimeout(this.timer);
    this.watcher?.close();
  }

  /** Stops watching, then makes a last check so that the final state is reported. */
  async close(): Promise<void> {
    this.stop();
    await this.check(true);
  }
}
