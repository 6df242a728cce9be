/** Where things are when nothing says otherwise; shared by `vtpm serve` and the client commands. */
import { existsSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';

export const DEFAULT_LISTEN = '127.0.0.1:7390';

export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.VTPM_DATA_DIR) return env.VTPM_DATA_DIR;
  if (process.getuid?.() === 0) return '/var/lib/vtpm';
  return join(env.XDG_DATA_HOME ?? join(homedir(), '.local', 'share'), 'vtpm');
}

export function defaultRunDir(dataDir: string, env: NodeJS.ProcessEnv = process.env): string {
  return env.VTPM_RUN_DIR ?? join(dataDir, 'run');
}

/** A memory file system when there is one: the CA's key password passes through here. */
export function defaultScratchDir(): string {
  return existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
}

export function defaultUrl(env: NodeJS.ProcessEnv = process.env): string {
  return env.VTPM_URL ?? `http://${DEFAULT_LISTEN}`;
}
