#!/usr/bin/env node
/**
 * `vtpm`: the command line. `vtpm serve` runs the service; every other
 * command is a client of its API. Every command takes --json for one JSON
 * document on stdout; failures exit with a code per error kind (see EXIT_CODES).
 */
import { readFileSync } from 'node:fs';
import { Command, type CommanderError, Option } from 'commander';
import type { Attachment, EkCertificate, Started, Stopped, VtpmList, VtpmView } from '../api/vtpms.js';
import { EXIT_CODES, InvalidArgumentError, VtpmError } from '../errors.js';
import { SECRET_SECURITY_MODES } from '../tpm-spec/secret-security.js';
import { TPM_MODELS, TPM_VERSIONS } from '../tpm-spec/tpm-spec.js';
import { registerBackupCommands } from './backup-commands.js';
import { confirm } from './confirm.js';
import { client, emit, globals, vmPath, withClientOptions } from './context.js';
import { defaultRunDir } from './defaults.js';
import { registerHostCommands } from './host-commands.js';
import { registerIdentityCommands } from './identity-commands.js';
import { registerLibvirtCommands } from './libvirt-commands.js';
import { registerReferenceCommands } from './reference-commands.js';
import { shellQuote, showAttachment, showVtpm, table } from './output.js';
import { keyValue } from './parsers.js';
import { registerServeCommand } from './serve-command.js';
import { registerVaultCommands } from './vault-commands.js';

const packageVersion = (
  JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

/**
 * What commander refuses (an unknown option or command, a missing or extra argument, a value outside
 * the choices) is a usage error, exit 2 as the README documents; commander's own default, 1, is the
 * code of an unexpected error. Help and --version exit 0.
 */
function usageExit(error: CommanderError): never {
  process.exit(error.exitCode === 0 ? 0 : EXIT_CODES.invalid_argument);
}

// Positional options: `vtpm create --version 2.0` is the TPM version, `vtpm --version` the program's.
// Set before any command is added: each command takes its settings from its parent when it is made.
const program = withClientOptions(new Command('vtpm'))
  .description('vtpm-manager: virtual TPMs for virtual machine fleets')
  .version(packageVersion)
  .enablePositionalOptions()
  .showHelpAfterError()
  .exitOverride(usageExit)
  .configureOutput({ outputError: (text, write) => write(text) });

registerServeCommand(program, packageVersion);

/** The libvirt domain of this host that still uses the vTPM, if libvirt can say; none where it cannot. */
async function libvirtDomainUsing(vm: string, dataDir: string): Promise<string | undefined> {
  const [{ domainUsing }, { Virsh }] = await Promise.all([
    import('../hypervisor/libvirt-check.js'),
    import('../hypervisor/virsh.js'),
  ]);
  return domainUsing(new Virsh(), vm, defaultRunDir(dataDir)).catch(() => undefined);
}

withClientOptions(program.command('create'))
  .description('create a vTPM for a VM (spec from --version/--model, flavor extra specs and image properties)')
  .requiredOption('--vm <uuid>', 'UUID of the VM')
  .addOption(new Option('--version <version>', 'TPM version').choices([...TPM_VERSIONS]))
  .addOption(new Option('--model <model>', 'TPM model (default tpm-tis)').choices([...TPM_MODELS]))
  .option('--flavor <key=value>', 'flavor extra spec, e.g. hw:tpm_version=2.0 (repeatable)', keyValue('--flavor'))
  .option('--image <key=value>', 'image property, e.g. hw_tpm_model=tpm-crb (repeatable)', keyValue('--image'))
  .addOption(new Option('--firmware <type>', 'guest firmware (default bios)').choices(['bios', 'uefi']))
  .option('--secure-boot', 'UEFI secure boot, Microsoft keys enrolled in the variable store')
  .addOption(
    new Option(
      '--secret-security <mode>',
      "who may use the vTPM's secret: user (default, this project only) or deployment (a vtpm-operator too)",
    ).choices([...SECRET_SECURITY_MODES]),
  )
  .action(
    async (
      options: {
        vm: string;
        version?: string;
        model?: string;
        flavor?: Record<string, string>;
        image?: Record<string, string>;
        firmware?: string;
        secureBoot?: boolean;
        secretSecurity?: string;
      },
      command: Command,
    ) => {
      // The create's own options only (undefined ones are left out of the JSON): the command's options
      // also hold --url, --json and the like, which the API refuses as fields it does not have.
      const { vm, version, model, flavor, image, firmware, secureBoot, secretSecurity } = options;
      const created = await (await client(command)).request<VtpmView>('POST', '/v1/vtpms', {
        vm,
        version,
        model,
        flavor,
        image,
        firmware,
        ...(secureBoot && { secure_boot: true }),
        ...(secretSecurity && { secret_security: secretSecurity }),
      });
      emit(command, created, () => showVtpm(created));
    },
  );

withClientOptions(program.command('list'))
  .description('list vTPMs')
  .action(async (_options: unknown, command: Command) => {
    const { vtpms } = await (await client(command)).request<VtpmList>('GET', '/v1/vtpms');
    emit(command, vtpms, () =>
      table(
        vtpms.map(({ vm, project, version, model, status, host }) => ({ vm, project, version, model, status, host })),
        ['vm', 'project', 'version', 'model', 'status', 'host'],
      ),
    );
  });

withClientOptions(program.command('show'))
  .description('show one vTPM')
  .argument('<vm>', 'VM UUID')
  .action(async (vm: string, _options: unknown, command: Command) => {
    const vtpm = await (await client(command)).request<VtpmView>('GET', vmPath(vm));
    emit(command, vtpm, () => showVtpm(vtpm));
  });

withClientOptions(program.command('start'))
  .description('start the vTPM; prints its socket, QEMU arguments and libvirt XML')
  .argument('<vm>', 'VM UUID')
  .option('--host <name>', 'start it on this host (a stopped vTPM may change hosts: its state is in the vault)')
  .action(async (vm: string, options: { host?: string }, command: Command) => {
    const started = await (await client(command)).request<Started>(
      'POST',
      `${vmPath(vm)}/start`,
      options.host === undefined ? undefined : { host: options.host },
    );
    if (started.unchanged) process.stderr.write(`vtpm: ${vm} was already running on ${started.host}\n`);
    emit(command, started, () => `${showVtpm(started)}\n${showAttachment(started)}`);
  });

withClientOptions(program.command('stop'))
  .description('stop the vTPM')
  .argument('<vm>', 'VM UUID')
  .option('--host <name>', 'only if it runs on this host')
  .action(async (vm: string, options: { host?: string }, command: Command) => {
    const stopped = await (await client(command)).request<Stopped>(
      'POST',
      `${vmPath(vm)}/stop`,
      options.host === undefined ? undefined : { host: options.host },
    );
    if (stopped.unchanged) {
      const where = options.host === undefined ? 'was not running' : `was not running on ${options.host}`;
      process.stderr.write(`vtpm: ${vm} ${where}\n`);
    }
    emit(command, stopped, () => showVtpm(stopped));
  });

withClientOptions(program.command('update'))
  .description('change secure boot of a stopped UEFI guest (its variable store starts afresh)')
  .argument('<vm>', 'VM UUID')
  .addOption(new Option('--secure-boot <state>', 'secure boot').choices(['on', 'off']).makeOptionMandatory())
  .option('--yes', 'do not ask for confirmation (scripts)', false)
  .action(async (vm: string, options: { secureBoot: 'on' | 'off'; yes: boolean }, command: Command) => {
    const api = await client(command);
    const current = await api.request<VtpmView>('GET', vmPath(vm));
    // Only what the service would carry out is asked about; its refusals (BIOS, running) come as they are.
    const wouldChange = current.firmware === 'uefi' && current.status === 'stopped';
    if (wouldChange && current.secure_boot !== (options.secureBoot === 'on'))
      await confirm(
        `turn secure boot ${options.secureBoot} for VM ${vm}? Its UEFI variable store (enrolled keys, boot ` +
          'entries) is replaced by a fresh one',
        options.yes,
      );
    const updated = await api.request<VtpmView>('PATCH', vmPath(vm), {
      secure_boot: options.secureBoot === 'on',
    });
    emit(command, updated, () => showVtpm(updated));
  });

withClientOptions(program.command('delete'))
  .description('delete the vTPM: its secret is destroyed (crypto-erase), then its state')
  .argument('<vm>', 'VM UUID')
  .option('--force', 'stop it first if it is running', false)
  .option('--yes', 'do not ask for confirmation (scripts)', false)
  .action(async (vm: string, options: { force: boolean; yes: boolean }, command: Command) => {
    const api = await client(command);
    const path = `${vmPath(vm)}?force=${options.force}`;
    // Refused before anything is asked: missing, not the caller's to delete, or running without --force.
    await api.request<void>('DELETE', `${path}&dry_run=true`);
    // Only the question names the domain: with --yes, nothing asks, and virsh is not run for nothing.
    const domain = options.yes ? undefined : await libvirtDomainUsing(vm, globals(command).dataDir);
    await confirm(
      `crypto-erase the vTPM of VM ${vm}? Its secret is destroyed: its state can never be read again` +
        (domain ? `, and libvirt domain ${domain} still uses it (its next start will fail)` : ''),
      options.yes,
    );
    await api.request<void>('DELETE', path);
    emit(command, { vm, deleted: true }, () => `deleted vTPM ${vm}`);
  });

withClientOptions(program.command('qemu-args'))
  .description('QEMU arguments that attach a guest to the vTPM')
  .argument('<vm>', 'VM UUID')
  .action(async (vm: string, _options: unknown, command: Command) => {
    const api = await client(command);
    const [attachment, vtpm] = await Promise.all([
      api.request<Attachment>('GET', `${vmPath(vm)}/attachment`),
      api.request<VtpmView>('GET', vmPath(vm)),
    ]);
    // QEMU given these while no swtpm serves the socket fails with a bare "No such file or directory".
    if (vtpm.status !== 'running')
      process.stderr.write(
        `vtpm: note: the vTPM of VM ${vtpm.vm} is ${vtpm.status}: these arguments work once \`vtpm start\` ` +
          'has opened its socket\n',
      );
    emit(command, { qemu_args: attachment.qemu_args }, () => attachment.qemu_args.map(shellQuote).join(' '));
  });

withClientOptions(program.command('libvirt-xml'))
  .description('libvirt <tpm> element (external backend) for the vTPM')
  .argument('<vm>', 'VM UUID')
  .action(async (vm: string, _options: unknown, command: Command) => {
    const attachment = await (await client(command)).request<Attachment>('GET', `${vmPath(vm)}/attachment`);
    emit(command, { libvirt_xml: attachment.libvirt_xml, libvirt_firmware_xml: attachment.libvirt_firmware_xml }, () =>
      [attachment.libvirt_xml, ...(attachment.libvirt_firmware_xml ? [attachment.libvirt_firmware_xml] : [])].join(
        '\n',
      ),
    );
  });

withClientOptions(program.command('ek'))
  .description('EK certificates of the vTPM, PEM')
  .argument('<vm>', 'VM UUID')
  .option('--key-type <type>', 'only this key type, e.g. rsa2048 or secp384r1')
  .action(async (vm: string, options: { keyType?: string }, command: Command) => {
    const { certificates } = await (await client(command)).request<{ certificates: EkCertificate[] }>(
      'GET',
      `${vmPath(vm)}/ek`,
    );
    const chosen =
      options.keyType === undefined ? certificates : certificates.filter((c) => c.key_type === options.keyType);
    if (chosen.length === 0) {
      throw new InvalidArgumentError(
        '--key-type',
        `one of ${certificates.map((c) => c.key_type).join(', ')}`,
        options.keyType,
      );
    }
    // Text before a PEM block is explanatory text (RFC 7468), which openssl and certtool pass over.
    const described = (c: EkCertificate) =>
      [`${c.key_type}: subject ${c.subject || '(empty)'}, issued by ${c.issuer}`, c.pem.trimEnd()].join('\n');
    emit(command, { certificates: chosen }, () => chosen.map(described).join('\n'));
  });

registerVaultCommands(program);
registerLibvirtCommands(program);
registerIdentityCommands(program);
registerHostCommands(program);
registerBackupCommands(program);
registerReferenceCommands(program, packageVersion);

function fail(error: unknown): never {
  const json = process.argv.includes('--json');
  if (error instanceof VtpmError) {
    if (json) process.stdout.write(JSON.stringify({ error: error.toJSON() }, null, 2) + '\n');
    process.stderr.write(`vtpm: ${error.message} [${error.code}]\n`);
    process.exit(EXIT_CODES[error.code] ?? 1);
  }
  process.stderr.write(`vtpm: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
}

program.parseAsync(process.argv).catch(fail);
