/**
 * What a running vTPM's next state report follows, kept beside the launch's
 * runtime files: the states the control plane may hold as the newest, written
 * before each report is sent. An agent that takes over a running swtpm after
 * a crash reads it and names those states, as the agent before it would have;
 * without it, its first report would name none, and a copy of that report
 * replayed later would be taken over newer states (a rollback).
 *
 * Written for the next process on this host, not for a power loss (which
 * takes swtpm with it): a rename over the file, not synced.
 */
import { readFile, rename, rm, writeFile } from 'node:fs/promises';

export interface Lineage {
  /** The states recorded by an agent before this one, the first the one it knew was taken (none: unknown). */
  readonly known: readonly string[];
  /** Records `digests` as what the control plane may hold; records in the order asked. */
  record(digests: readonly string[]): Promise<void>;
}

const DIGEST = /^[0-9a-f]{64}$/;

class FileLineage implements Lineage {
  private writing: Promise<void> = Promise.resolve();

  constructor(
    private readonly path: string,
    readonly known: readonly string[],
  ) {}

  record(digests: readonly string[]): Promise<void> {
    this.writing = this.writing.catch(() => undefined).then(() => this.write(digests));
    return this.writing;
  }

  /**
   * A lineage that cannot be written (the disk full) is removed rather than left stale: a stale one would
   * name states the control plane no longer holds, and every report after a crash would be refused.
   */
  private async write(digests: readonly string[]): Promise<void> {
    const temporary = `${this.path}.tmp`;
    try {
      await writeFile(temporary, `${digests.join('\n')}\n`, { mode: 0o600 });
      await rename(temporary, this.path);
    } catch {
      await rm(temporary, { force: true }).catch(() => undefined);
      await rm(this.path, { force: true });
    }
  }
}

/** The lineage kept in `path`, with what an earlier agent recorded there. */
export async function openLineage(path: string): Promise<Lineage> {
  const text = await readFile(path, 'utf8').catch(() => '');
  return new FileLineage(
    path,
    text.split('\n').filter((line) => DIGEST.test(line)),
  );
}

/** A lineage for a new launch: whatever an earlier launch left in `path` is not this one's. */
export function freshLineage(path: string): Lineage {
  return new FileLineage(path, []);
}
