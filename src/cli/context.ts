/** What every client command shares: the global options, the API client, output. */
import { type Command, Option } from 'commander';
import { ApiClient } from '../api/client.js';
import { defaultDataDir, defaultUrl } from './defaults.js';

export interface GlobalOptions {
  url: string;
  tokenFile: string | undefined;
  dataDir: string;
  caFile: string | undefined;
  json: boolean;
}

interface ClientFlags {
  url?: string;
  tokenFile?: string;
  dataDir?: string;
  caFile?: string;
  json?: boolean;
}

/**
 * Options every command understands, before or after the command name. The
 * token is never an argument (every local user's `ps` shows those): it comes
 * from --token-file, VTPM_TOKEN or the data directory's admin.token.
 */
export function withClientOptions(command: Command): Command {
  command.option('--url <url>', 'control plane URL (env VTPM_URL; default http://127.0.0.1:7390)');
  // --token is gone (before 1.0): say what replaced it rather than "unknown option".
  command.addOption(new Option('--token <token>').hideHelp());
  command.hook('preAction', (_, action) => {
    if (action.optsWithGlobals<{ token?: string }>().token !== undefined)
      action.error(
        "error: --token is no longer accepted (every local user's ps shows it): " +
          'put the token in a file only you can read and pass --token-file FILE, or set VTPM_TOKEN',
        { exitCode: 2, code: 'vtpm.tokenOnCommandLine' },
      );
  });
  command.option(
    '--token-file <file>',
    'file (owner-only) holding the API token (or env VTPM_TOKEN; default: <data-dir>/admin.token)',
  );
  return withDataDir(command)
    .option('--ca-file <pem>', CA_FILE_HELP)
    .option('--json', 'print one JSON document on stdout');
}

const CA_FILE_HELP =
  "CA certificate the control plane's TLS certificate is checked against (env VTPM_CA_FILE; default: the system's)";

/** The data directory option alone: for the services (vtpm serve, vtpm agent), which are no API clients. */
export function withDataDir(command: Command, options: { caFile?: boolean } = {}): Command {
  command.option(
    '--data-dir <dir>',
    'data directory (env VTPM_DATA_DIR; default /var/lib/vtpm as root, else $XDG_DATA_HOME/vtpm or ' +
      '~/.local/share/vtpm)',
  );
  return options.caFile ? command.option('--ca-file <pem>', CA_FILE_HELP) : command;
}

export function globals(command: Command): GlobalOptions {
  const flags = command.optsWithGlobals<ClientFlags>();
  return {
    url: flags.url ?? defaultUrl(),
    tokenFile: flags.tokenFile,
    dataDir: flags.dataDir ?? defaultDataDir(),
    caFile: flags.caFile,
    json: flags.json === true,
  };
}

export async function client(command: Command): Promise<ApiClient> {
  const options = globals(command);
  return ApiClient.connect({
    url: options.url,
    tokenFile: options.tokenFile,
    dataDir: options.dataDir,
    caFile: options.caFile,
  });
}

export function emit(command: Command, json: unknown, human: () => string): void {
  process.stdout.write((globals(command).json ? JSON.stringify(json, null, 2) : human()) + '\n');
}

export const vmPath = (vm: string) => `/v1/vtpms/${encodeURIComponent(vm)}`;
