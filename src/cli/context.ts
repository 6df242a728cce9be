/** What every client command shares: the global options, the API client, output. */
import type { Command } from 'commander';
import { ApiClient } from '../api/client.js';
import { defaultDataDir, defaultUrl } from './defaults.js';

export interface GlobalOptions {
  url: string;
  token: string | undefined;
  dataDir: string;
  caFile: string | undefined;
  json: boolean;
}

interface ClientFlags {
  url?: string;
  token?: string;
  dataDir?: string;
  caFile?: string;
  json?: boolean;
}

/** Options every command understands, before or after the command name. */
export function withClientOptions(command: Command): Command {
  return command
    .option('--url <url>', 'control plane URL (env VTPM_URL; default http://127.0.0.1:7390)')
    .option('--token <token>', 'API token (env VTPM_TOKEN; default: <data-dir>/admin.token)')
    .option('--data-dir <dir>', 'data directory (env VTPM_DATA_DIR)')
    .option(
      '--ca-file <pem>',
      "CA certificate the control plane's TLS certificate is checked against (env VTPM_CA_FILE; default: the system's)",
    )
    .option('--json', 'print one JSON document on stdout');
}

export function globals(command: Command): GlobalOptions {
  const flags = command.optsWithGlobals<ClientFlags>();
  return {
    url: flags.url ?? defaultUrl(),
    token: flags.token,
    dataDir: flags.dataDir ?? defaultDataDir(),
    caFile: flags.caFile,
    json: flags.json === true,
  };
}

export async function client(command: Command): Promise<ApiClient> {
  const options = globals(command);
  return ApiClient.connect({
    url: options.url,
    token: options.token,
    dataDir: options.dataDir,
    caFile: options.caFile,
  });
}

export function emit(command: Command, json: unknown, human: () => string): void {
  process.stdout.write((globals(command).json ? JSON.stringify(json, null, 2) : human()) + '\n');
}

export const vmPath = (vm: string) => `/v1/vtpms/${encodeURIComponent(vm)}`;
