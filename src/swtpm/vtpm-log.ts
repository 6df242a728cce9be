/**
 * A vTPM's own log (data/log/<vm>.log): swtpm's errors (its level 1; higher
 * levels dump TPM commands in hex, which carry secrets such as unsealed data)
 * between lines of ours with the time, marking each launch and exit, so an
 * operator sees what happened to one VM's TPM without the service's log.
 * Rotated at launch: one older file is kept.
 */
import { appendFileSync, renameSync, statSync } from 'node:fs';
import { appendFile } from 'node:fs/promises';

const ROTATE_BYTES = 1024 * 1024;

const entry = (line: string) => `${new Date().toISOString()} vtpm-manager: ${line}\n`;

/**
 * At a launch, before swtpm's own output goes to the file: rotated if large, then our line. Synchronous,
 * like the rest of a launch's preparation on the local disk: a stat, perhaps a rename, and one append.
 */
export function openVtpmLog(logFile: string, line: string): void {
  if ((statSync(logFile, { throwIfNoEntry: false })?.size ?? 0) > ROTATE_BYTES) renameSync(logFile, `${logFile}.1`);
  try {
    appendFileSync(logFile, entry(line), { mode: 0o600 });
  } catch {
    // A log that cannot be written is not a TPM that cannot run.
  }
}

/** Never fails the operation it describes: a log that cannot be written is not a TPM that cannot run. */
export async function noteInVtpmLog(logFile: string, line: string): Promise<void> {
  await appendFile(logFile, entry(line), { mode: 0o600 }).catch(() => undefined);
}

export function describeExit(exit: { code: number | null; signal: string | null }): string {
  if (exit.signal) return `swtpm exited on ${exit.signal}`;
  return exit.code === null ? 'swtpm exited' : `swtpm exited with status ${exit.code}`;
}
