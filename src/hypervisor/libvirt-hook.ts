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

export const HOOK_MARKER = '# vtpm-manager libvirt hook';

/** How long the hook waits for the control plane on each call: libvirtd waits for the hook. */
export const HOOK_TIMEOUT_MS = 10_000;

/**
 * The hook script: a shell line that runs the hook entry point under this very Node, with the service's coordinates.
 */
export function hookScript(options: {
  node: string;
  entry: string;
  url: string;
  dataDir: string;
  socketDir: string;
  host: string;
  timeoutMs: number;
  caFile?: string | undefined;
  tokenFile?: string | undefined;
}): string {
  const quote = (value: string) => `'${value.replaceAll("'", "'\\''")}'`;
  const caFileSetting = options.caFile ? ` VTPM_CA_FILE=${quote(options.caFile)}` : '';
  const tokenFileSetting = options.tokenFile ? ` VTPM_TOKEN_FILE=${quote(options.tokenFile)}` : '';
  return [
    '#!/bin/sh',
    HOOK_MARKER,
    '# Installed by `vtpm libvirt install-hook`: starts the vTPM of a domain whose <tpm> is a',
    '# vtpm-manager socket before QEMU starts, and stops it once QEMU has gone.',
    `VTPM_URL=${quote(options.url)} VTPM_DATA_DIR=${quote(options.dataDir)} ` +
      `VTPM_HOOK_SOCKET_DIR=${quote(options.socketDir)} VTPM_HOOK_HOST=${quote(options.host)} \\`,
    `VTPM_HOOK_TIMEOUT_MS=${options.timeoutMs}${caFileSetting}${tokenFileSetting} \\`,
    `exec ${quote(options.node)} ${quote(options.entry)} "$@"`,
    '',
  ].join('\n');
}
