/**
 * `vtpm libvirt install-hook` and `uninstall-hook`: vtpm-manager plugged into,
 * and out of, libvirtd's domain lifecycle, with a host-scoped token of its own.
 * Only the definitions are here: what the commands do is in
 * libvirt-hook-actions.ts, loaded when one runs.
 */
import { hostname } from 'node:os';
import type { Command } from 'commander';
import { withClientOptions } from './context.js';
import type { InstallHookOptions, UninstallHookOptions } from './libvirt-hook-actions.js';

const DEFAULT_HOOKS_DIR = '/etc/libvirt/hooks';

export function registerLibvirtHookCommands(libvirt: Command): void {
  withClientOptions(libvirt.command('install-hook'))
    .description(
      "install libvirt's qemu hook, which starts a domain's vTPM before QEMU and stops it after, " +
        'with a token of its own that may do only that, on this host (restart libvirtd afterwards)',
    )
    .option('--hooks-dir <dir>', "libvirt's hooks directory", DEFAULT_HOOKS_DIR)
    .option('--host <name>', "this host's name as vtpm-manager knows it (vtpm hosts)", hostname())
    .option('--run-dir <dir>', "where this host's agent puts vTPM sockets (default <data-dir>/run)")
    .option(
      '--hook-token-file <path>',
      "where the hook's own token is written, owner-only (default <data-dir>/libvirt-hook.token)",
    )
    .option('--replace', "replace another vtpm-manager deployment's hook (it is kept as a backup)")
    .action(async (options: InstallHookOptions, command: Command) =>
      (await import('./libvirt-hook-actions.js')).installHook(options, command),
    );

  withClientOptions(libvirt.command('uninstall-hook'))
    .description("remove this deployment's qemu hook (and revoke its token); other hooks stay")
    .option('--hooks-dir <dir>', "libvirt's hooks directory", DEFAULT_HOOKS_DIR)
    .option('--host <name>', "this host's name as vtpm-manager knows it (vtpm hosts)", hostname())
    .action(async (options: UninstallHookOptions, command: Command) =>
      (await import('./libvirt-hook-actions.js')).uninstallHook(options, command),
    );
}
