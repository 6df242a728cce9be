/**
 * A vTPM's own log (data/log/<vm>.log): swtpm's errors (its level 1; higher
 * levels dump TPM commands in hex, which carry secrets such as unsealed data)
 * between lines of ours with the time, marking each launch and exit, so an
 * operator sees what happened to one VM's TPM without the service's log.
 * Rotated at launch: one older file is kept.
 */
import { appendFile, rename, stat } from 'node:fs/promises';

const ROTATE_BYTES = 1024 * 1024;

export async function rotateVtpmLog(logFile: string): Promise<void> {
  const size = await stat(logFile).then(
    (s) => s.size,
    () => 0,
  );
  if (size > ROTATE_BYTES) await rename(logFile, `${logFile}.1`);
}

/** Never fails the operation it describes: a log that cannot be written is not a TPM that cannot run. */
export async function noteInVtpmLog(logFile: string, line: string): Promise<void> {
  await appendFile(logFile, `${new Date().toISOString()} vtpm-manager: ${line}\n`, { mode: 0o600 }).catch(
    () => undefined,
  );
}

export function describeExit(exit: { code: number | null; signal: string | null }): string {
  if (exit.signal) return `swtpm exited on ${exit.signal}`;
  return exit.code === null ? 'swtpm exited' : `swtpm exited with status ${exit.code}`;
}
