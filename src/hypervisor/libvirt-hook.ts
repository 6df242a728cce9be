/**
 * libvirt's qemu hook (/etc/libvirt/hooks/qemu), for domains whose <tpm>
 * is a vtpm-manager socket: the vTPM starts on this host at `prepare begin`
 * (before libvirt launches QEMU, so QEMU finds the socket), and is stopped at
 * `release end` if it still runs on this host (QEMU is gone; swtpm has already
 * exited with it and the agent has committed its final state). On the
 * destination of a live migration, `migrate begin` prepares the vTPM's
 * migration to this host. Every other domain and operation is left alone
 * without a network call.
 *
 * libvirtd waits for the hook, so every call has a deadline; a failure at
 * `prepare` fails the domain's start with the hook's message, which libvirt
 * shows to the user (virsh start) and writes to its log.
 */
import { dirname } from 'node:path';
import type { Domain } from './libvirt-domain.js';
import { usesVtpmManager } from './libvirt-domain.js';

export type HookAction = { kind: 'start' | 'stop' | 'prepare-migration'; vm: string } | undefined;

const ACTIONS: Record<string, NonNullable<HookAction>['kind']> = {
  'prepare begin': 'start',
  'release end': 'stop',
  // Called on the destination before an incoming migration, while the guest still runs on the source.
  'migrate begin': 'prepare-migration',
};

/** Whether the hook needs the domain XML on its stdin and may act. */
export function hookMayAct(operation: string, subOperation: string): boolean {
  return `${operation} ${subOperation}` in ACTIONS;
}

export function hookAction(operation: string, subOperation: string, domain: Domain, socketDir: string): HookAction {
  const kind = ACTIONS[`${operation} ${subOperation}`];
  return kind && usesVtpmManager(domain, socketDir) ? { kind, vm: domain.uuid } : undefined;
}

const HOOK_MARKER = '# vtpm-manager libvirt hook';

/** How long the hook waits for the control plane on each call: libvirtd waits for the hook. */
export const HOOK_TIMEOUT_MS = 10_000;

/** The program the hook script runs: the package's own bin, installed beside `vtpm` (npm's bin directory). */
export const HOOK_PROGRAM = 'vtpm-libvirt-hook';

/** What libvirtd's PATH holds under systemd; the hook's own directories go first. */
const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

const quote = (value: string) => `'${value.replaceAll("'", "'\\''")}'`;

export interface HookSettings {
  /** The installed hook program (a bin link that upgrades replace), never a path inside a checkout. */
  program: string;
  /** Where `node` was found at install, for the program's `#!/usr/bin/env node`. */
  nodeDir: string;
  url: string;
  dataDir: string;
  socketDir: string;
  host: string;
  timeoutMs: number;
  caFile?: string | undefined;
  tokenFile: string;
}

/**
 * What of `${socketDir}/` libvirt's XML holds as it is: libvirt writes &, <, >, ' and " (and control characters)
 * in an attribute escaped, so the text the script looks for ends before the first of them. Any XML whose TPM
 * socket is in `socketDir` contains it: the script's check lets through every domain the program's parse acts on.
 */
function socketDirText(socketDir: string): string {
  const text = `${socketDir}/`;
  const escaped = text.search(/[&<>'"\p{Cc}]/u);
  return escaped === -1 ? text : text.slice(0, escaped);
}

/**
 * The hook script. Calls the hook never acts on, and domains whose XML does not name the vTPM socket directory,
 * return before Node starts: libvirtd waits for every call. The program gets the XML byte for byte and decides
 * by its parse; the script's text match only spares it the calls that cannot concern it. If the program is gone
 * (vtpm-manager uninstalled, or the checkout npm linked it from moved), only the starts of domains that use a
 * vtpm-manager socket fail, with a message saying so; every other domain is left alone.
 */
export function hookScript(options: HookSettings): string {
  const settings = [
    `VTPM_URL=${quote(options.url)}`,
    `VTPM_DATA_DIR=${quote(options.dataDir)}`,
    `VTPM_HOOK_SOCKET_DIR=${quote(options.socketDir)}`,
    `VTPM_HOOK_HOST=${quote(options.host)}`,
    `VTPM_HOOK_TIMEOUT_MS=${options.timeoutMs}`,
    ...(options.caFile ? [`VTPM_CA_FILE=${quote(options.caFile)}`] : []),
    `VTPM_TOKEN_FILE=${quote(options.tokenFile)}`,
  ];
  const acting = Object.keys(ACTIONS)
    .map((call) => `'${call}'`)
    .join('|');
  return [
    '#!/bin/sh',
    HOOK_MARKER,
    '# Installed by `vtpm libvirt install-hook`, removed by `vtpm libvirt uninstall-hook`: starts the vTPM of a',
    '# domain whose <tpm> is a vtpm-manager socket before QEMU starts, and stops it once QEMU has gone.',
    `case "$2 $3" in ${acting}) ;; *) exec cat >/dev/null ;; esac`,
    '# The domain XML as libvirt wrote it: $(cat) alone would drop its last newlines.',
    'xml=$(cat; echo .)',
    `xml=\${xml%.}`,
    `case "$xml" in *${quote(socketDirText(options.socketDir))}*) ;; *) exit 0 ;; esac`,
    `export PATH=${quote(`${dirname(options.program)}:${options.nodeDir}`)}:${SYSTEM_PATH}`,
    ...settings.map((setting) => `export ${setting}`),
    `program=${quote(options.program)}`,
    'if [ ! -x "$program" ]; then',
    '  echo "vtpm-manager: cannot act for libvirt domain $1: $program is gone (vtpm-manager uninstalled or moved):' +
      ' install vtpm-manager again (npm install -g), or remove this hook (vtpm libvirt uninstall-hook)" >&2',
    '  [ "$2" = release ] && exit 0',
    '  exit 1',
    'fi',
    `printf '%s' "$xml" | exec "$program" "$@"`,
    '',
  ].join('\n');
}

/** The deployment an installed vtpm-manager hook serves, read back from its script; undefined for another hook. */
export function hookOwner(script: string): { url: string; dataDir: string; tokenFile?: string } | undefined {
  if (!script.includes(HOOK_MARKER)) return undefined;
  const setting = (name: string) => {
    const value = new RegExp(`${name}='((?:[^']|'\\\\'')*)'`).exec(script)?.[1];
    return value?.replaceAll("'\\''", "'");
  };
  return {
    url: setting('VTPM_URL') ?? '',
    dataDir: setting('VTPM_DATA_DIR') ?? '',
    ...(setting('VTPM_TOKEN_FILE') !== undefined && { tokenFile: setting('VTPM_TOKEN_FILE') }),
  };
}
