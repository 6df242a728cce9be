/**
 * Notices every change of a running swtpm's state file. swtpm writes a
 * temporary file and renames it over the state file; the file-system
 * notification for that rename, after a short debounce that folds the burst of
 * events one write makes, triggers one read. Changes are reported in order,
 * each only after the previous report finished, and only when the content
 * really changed.
 */
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { digestOf } from '../vault/state-vault.js';

const DEBOUNCE_MS = 5;

export class StateWatcher {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private reporting: Promise<void> = Promise.resolve();
  private lastDigest: string | undefined;

  constructor(
    private readonly dir: string,
    private readonly file: string,
    private readonly report: (data: Buffer) => Promise<void>,
    initial?: Buffer,
  ) {
    this.lastDigest = initial && digestOf(initial);
  }

  start(): void {
    this.watcher = watch(this.dir, (_event, name) => {
      if (name !== null && !name.toLowerCase().endsWith('.permall')) return;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => void this.check(), DEBOUNCE_MS);
    });
  }

  /** Reads the file now and reports it if it changed; resolves once reported. */
  check(): Promise<void> {
    // A failed report is the reporter's to log; the next change still gets reported.
    this.reporting = this.reporting.catch(() => undefined).then(async () => {
      let data: Buffer;
      try {
        data = await readFile(join(this.dir, this.file));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw error;
      }
      const digest = digestOf(data);
      if (digest === this.lastDigest) return;
      await this.report(data);
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
    await this.check();
  }
}
