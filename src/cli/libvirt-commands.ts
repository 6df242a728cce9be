/**
 * `vtpm libvirt ...`: run on a libvirt host. attach gives a domain a
 * vtpm-manager TPM; check lists what libvirt and vtpm-manager disagree on;
 * adopt takes over the TPM libvirt's own emulator backend created. The hook's
 * install and uninstall are in libvirt-hook-commands.ts. Only the definitions
 * are here: what the commands do is in libvirt-actions.ts, loaded when one runs.
 */
import { hostname } from 'node:os';
import { Option, type Command } from 'commander';
import { DEFAULT_LIBVIRT_URI } from '../hypervisor/libvirt-uri.js';
import { TPM_MODELS, TPM_VERSIONS } from '../tpm-spec/tpm-spec.js';
import { withClientOptions } from './context.js';
import type { AdoptOptions, AttachOptions, CheckOptions } from './libvirt-actions.js';
import { registerLibvirtHookCommands } from './libvirt-hook-commands.js';

const DEFAULT_SWTPM_DIR = '/var/lib/libvirt/swtpm';

const connectOption = () => new Option('--connect <uri>', 'libvirt connection URI').default(DEFAULT_LIBVIRT_URI);

export function registerLibvirtCommands(program: Command): void {
  const libvirt = program.command('libvirt').description('use vtpm-manager from libvirt: hook, attach, adopt');

  registerLibvirtHookCommands(libvirt);

  withClientOptions(libvirt.command('attach'))
    .description(
      'give a libvirt domain a vtpm-manager TPM: ' +
        "creates the vTPM for the domain's UUID and adds the <tpm> element to its definition",
    )
    .argument('<domain>', 'domain name or UUID')
    .addOption(new Option('--version <version>', 'TPM version').choices([...TPM_VERSIONS]))
    .addOption(new Option('--model <model>', 'TPM model').choices([...TPM_MODELS]))
    .option(
      '--replace',
      "replace the domain's current TPM (its state is not carried over: `vtpm libvirt adopt` keeps it)",
    )
    .addOption(connectOption())
    .action(async (name: string, options: AttachOptions, command: Command) =>
      (await import('./libvirt-actions.js')).attach(name, options, command),
    );

  withClientOptions(libvirt.command('check'))
    .description(
      "list libvirt domains whose vTPM is missing, and this host's vTPMs whose domain is gone " +
        '(--prune deletes those vTPMs)',
    )
    .option('--host <name>', "this host's name as vtpm-manager knows it (vtpm hosts)", hostname())
    .option('--run-dir <dir>', "where this host's agent puts vTPM sockets (default <data-dir>/run)")
    .option('--prune', 'delete the stopped vTPMs whose domain is gone: their state is crypto-erased, for good')
    .option('--yes', 'with --prune: do not ask (scripts); without a terminal --prune needs it')
    .addOption(connectOption())
    .action(async (options: CheckOptions, command: Command) =>
      (await import('./libvirt-actions.js')).check(options, command),
    );

  withClientOptions(libvirt.command('adopt'))
    .description(
      "take over the TPM libvirt's emulator backend created for a shut-off domain: " +
        'same EK, NV contents and PCR banks, now in vtpm-manager',
    )
    .argument('<domain>', 'domain name or UUID')
    .option('--swtpm-dir <dir>', 'where libvirt keeps its swtpm states', DEFAULT_SWTPM_DIR)
    .option('--remove-source', "erase libvirt's copy of the TPM state once the domain uses vtpm-manager")
    .addOption(connectOption())
    .action(async (name: string, options: AdoptOptions, command: Command) =>
      (await import('./libvirt-actions.js')).adopt(name, options, command),
    );
}
