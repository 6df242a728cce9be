/**
 * The watchers of one running vTPM's state on its host: swtpm's state file,
 * and a UEFI guest's variable store. Each change is reported as the launch's.
 */
import { basename, dirname } from 'node:path';
import type { Logger } from 'pino';
import type { StateKind } from '../store/index.js';
import type { StateChange } from './host-agent.js';
import type { Lineage } from './lineage.js';
import { StateWatcher, type WatchedFile } from './state-watcher.js';

export interface WatchedVtpm {
  vm: string;
  /** The launch of swtpm whose changes these are. */
  instance: string;
  stateDir: string;
  stateFile: string;
  /** A UEFI guest's variable store, which QEMU writes. */
  nvram?: string | undefined;
  /** What the host started it with: not reported again. */
  initial: { tpm?: Buffer; nvram?: Buffer };
  /** What each kind's reports follow, kept for an agent that takes over after a crash. */
  lineage: Record<StateKind, Lineage>;
  report(change: StateChange): Promise<void>;
  /** A change was taken `lagMs` after it was noticed. */
  taken(lagMs: number): void;
  logger: Logger;
}

export function watchVtpm(vtpm: WatchedVtpm): StateWatcher[] {
  const { vm, logger } = vtpm;
  const watcher = (kind: StateKind, target: WatchedFile) =>
    new StateWatcher(
      target,
      ({ data, final, after }) => vtpm.report({ vm, kind, data, final, instance: vtpm.instance, after }),
      {
        refused: (error) =>
          logger.warn({ vm, kind, code: error.code, msg: error.message }, 'a state report was refused'),
        failed: (error, retryInMs) =>
          logger.warn({ vm, kind, err: error, retryInMs }, 'a state report failed; retrying'),
        watchFailed: (error) => logger.warn({ vm, kind, err: error }, 'file-system notifications failed; polling'),
        taken: vtpm.taken,
      },
      vtpm.initial[kind],
      vtpm.lineage[kind],
    );
  const tpm = watcher('tpm', {
    dir: vtpm.stateDir,
    file: vtpm.stateFile,
    matches: (name) => name.toLowerCase().endsWith('.permall'),
    debounceMs: 5,
  });
  if (vtpm.nvram === undefined) return [tpm];
  const file = basename(vtpm.nvram);
  // QEMU writes the variable store in place, a few blocks at a time: a longer pause folds one update.
  const nvram = watcher('nvram', { dir: dirname(vtpm.nvram), file, matches: (name) => name === file, debounceMs: 50 });
  return [tpm, nvram];
}
