#!/usr/bin/env node
/**
 * `vtpm`: the command line. `vtpm serve` runs the service; every other
 * command is a client of its API. Every command takes --json for one JSON
 * document on stdout; failures exit with a code per error kind (see EXIT_CODES).
 */
import { readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { Command, InvalidArgumentError as CommanderArgumentError, Option } from 'commander';
import pino from 'pino';
import { EXIT_CODES, InvalidArgumentError, VtpmError } from '../errors.js';
import { startServer } from '../serve/start-server.js';
import type { HostList, PoolStatus } from '../api/hosts.js';
import type { Attachment, EkCertificate, GenerationView, Restored, Started, VtpmList, VtpmView } from '../api/vtpms.js';
import { DEFAULT_HOST_TPM, KEY_MANAGER_KINDS, PIN_ENVIRONMENT, PKCS11_DEFAULTS } from '../keys/index.js';
import { SECRET_SECURITY_MODES } from '../tpm-spec/secret-security.js';
import { TPM_MODELS, TPM_VERSIONS } from '../tpm-spec/tpm-spec.js';
import { DEFAULT_LISTEN, defaultRunDir, defaultScratchDir } from './defaults.js';
import { client, emit, globals, vmPath, withClientOptions } from './context.js';
import { registerHostCommands } from './host-commands.js';
import { registerIdentityCommands } from './identity-commands.js';
import { registerLibvirtCommands } from './libvirt-commands.js';
import { fields, shellQuote, table } from './output.js';

const packageVersion = (
  JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

// Positional options: `vtpm create --version 2.0` is the TPM version, `vtpm --version` the program's.
const program = withClientOptions(new Command('vtpm'))
  .description('vtpm-manager: virtual TPMs for virtual machine fleets')
  .version(packageVersion)
  .enablePositionalOptions()
  .showHelpAfterError()
  .configureOutput({ outputError: (text, write) => write(text) });

function keyValue(field: string) {
  return (value: string, previous: Record<string, string> = {}): Record<string, string> => {
    const at = value.indexOf('=');
    if (at <= 0) throw new CommanderArgumentError(`${field} takes KEY=VALUE, got "${value}"`);
    return { ...previous, [value.slice(0, at)]: value.slice(at + 1) };
  };
}

function integerAtLeast(minimum: number) {
  return (field: string) =>
    (value: string): number => {
      const parsed = Number(value);
      if (!/^\d+$/.test(value) || parsed < minimum)
        throw new CommanderArgumentError(`${field} takes a whole number of at least ${minimum}, got "${value}"`);
      return parsed;
    };
}
const positiveInteger = integerAtLeast(1);
const wholeNumber = integerAtLeast(0);

const showVtpm = (vtpm: VtpmView) =>
  fields(vtpm as unknown as Record<string, unknown>, [
    'vm',
    'version',
    'model',
    'firmware',
    'secure_boot',
    'host',
    'status',
    'socket',
    'project',
    'secret_security',
    'created_at',
    'updated_at',
  ]);
const showAttachment = (attachment: Attachment) =>
  [
    `socket       ${attachment.socket}`,
    `qemu args    ${attachment.qemu_args.map(shellQuote).join(' ')}`,
    'libvirt xml',
    attachment.libvirt_xml,
    ...(attachment.libvirt_firmware_xml ? ['libvirt firmware xml (in <os>)', attachment.libvirt_firmware_xml] : []),
  ].join('\n');

withClientOptions(program.command('serve'))
  .description("run the control plane and this host's agent (embedded defaults: SQLite, local key manager)")
  .option('--listen <host:port>', 'address to listen on', DEFAULT_LISTEN)
  .option('--run-dir <dir>', 'where swtpm sockets and pid files go (env VTPM_RUN_DIR; default <data-dir>/run)')
  .option('--scratch-dir <dir>', 'memory file system for short-lived secret configuration', defaultScratchDir())
  .addOption(new Option('--key-manager <kind>', 'key manager backend').choices([...KEY_MANAGER_KINDS]).default('local'))
  .option('--retention <count>', 'state generations kept per vTPM', positiveInteger('--retention'), 20)
  .option(
    '--pool-size <count>',
    'TPMs of each version manufactured ahead of demand (0: off)',
    wholeNumber('--pool-size'),
    4,
  )
  .option(
    '--pool-refill-pause <ms>',
    'pause after each background manufacture, capping the refill rate',
    wholeNumber('--pool-refill-pause'),
    0,
  )
  .option('--barbican-url <url>', "with --key-manager barbican: Barbican's endpoint, e.g. http://barbican:9311")
  .option(
    '--pkcs11-module <path>',
    "with --key-manager pkcs11: the HSM's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so",
  )
  .option('--pkcs11-token <label>', 'with --key-manager pkcs11: the label of the token to use', PKCS11_DEFAULTS.token)
  .option(
    '--pkcs11-pin-file <path>',
    `with --key-manager pkcs11: a file (owner-only) holding the token's user PIN (default: env ${PIN_ENVIRONMENT})`,
  )
  .option(
    '--pkcs11-key-label <label>',
    "with --key-manager pkcs11: the label of this installation's key-encryption keys in the token",
    PKCS11_DEFAULTS.keyLabel,
  )
  .option(
    '--seal-to-tpm',
    "local key manager: seal the master key to the host's TPM (a copied data directory then opens nothing elsewhere)",
  )
  .option('--host-tpm <tcti>', `the host TPM for --seal-to-tpm, as a tpm2-tools TCTI (default ${DEFAULT_HOST_TPM})`)
  .option('--tls-cert <pem>', 'serve the API over HTTPS with this certificate (chain)')
  .option('--tls-key <pem>', 'the private key of --tls-cert (must be readable by its owner only)')
  .option(
    '--swtpm-user <user>',
    'when run as root, the unprivileged user swtpm runs as (default tss; root keeps it root)',
  )
  .option(
    '--qemu-group <group>',
    "the group QEMU runs in when not root (libvirt's default: libvirt-qemu): " +
      'vTPM sockets and UEFI variable stores are shared with it',
  )
  .option(
    '--agent-ca-file <pem>',
    "CA certificate remote agents' TLS certificates are checked against (default: the system's)",
  )
  .addOption(
    new Option('--log-level <level>', 'log level')
      .choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace'])
      .default('info'),
  )
  .action(
    async (
      options: {
        listen: string;
        runDir?: string;
        scratchDir: string;
        keyManager: string;
        retention: number;
        poolSize: number;
        poolRefillPause: number;
        swtpmUser?: string;
        qemuGroup?: string;
        agentCaFile?: string;
        barbicanUrl?: string;
        pkcs11Module?: string;
        pkcs11Token: string;
        pkcs11PinFile?: string;
        pkcs11KeyLabel: string;
        sealToTpm?: boolean;
        hostTpm?: string;
        tlsCert?: string;
        tlsKey?: string;
        logLevel: string;
      },
      command: Command,
    ) => {
      const { dataDir } = globals(command);
      const logger = pino({ level: options.logLevel, base: { service: 'vtpm' } }, pino.destination(2));
      const server = await startServer({
        dataDir,
        listen: options.listen,
        runDir: options.runDir ?? defaultRunDir(dataDir),
        scratchDir: options.scratchDir,
        keyManager: options.keyManager,
        retention: options.retention,
        poolSize: options.poolSize,
        poolRefillPauseMs: options.poolRefillPause,
        swtpmUser: options.swtpmUser,
        qemuGroup: options.qemuGroup,
        agentCaFile: options.agentCaFile,
        sealToTpm: sealingTpm(options.sealToTpm === true, options.hostTpm),
        barbicanUrl: options.barbicanUrl,
        pkcs11: {
          module: options.pkcs11Module,
          token: options.pkcs11Token,
          pinFile: options.pkcs11PinFile,
          keyLabel: options.pkcs11KeyLabel,
        },
        tls: tlsOf(options.tlsCert, options.tlsKey),
        logger,
        version: packageVersion,
      });
      const tokenNote = server.adminTokenCreated ? 'admin token created in' : 'admin token in';
      process.stdout.write(
        `vtpm serve: listening on ${server.url}\n` +
          `vtpm serve: data directory ${dataDir}\n` +
          `vtpm serve: ${tokenNote} ${server.adminTokenPath}\n`,
      );
      const shutdown = (signal: string) => {
        logger.info({ signal }, 'shutting down; running vTPMs keep running');
        void server.close().then(() => process.exit(0));
      };
      process.once('SIGTERM', () => shutdown('SIGTERM'));
      process.once('SIGINT', () => shutdown('SIGINT'));
    },
  );

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
      const { secureBoot, secretSecurity, ...rest } = options;
      const created = await (await client(command)).request<VtpmView>('POST', '/v1/vtpms', {
        ...rest,
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
        vtpms.map(({ vm, version, model, status, host }) => ({ vm, version, model, status, host })),
        ['vm', 'version', 'model', 'status', 'host'],
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
    emit(command, started, () => `${showVtpm(started)}\n${showAttachment(started)}`);
  });

withClientOptions(program.command('stop'))
  .description('stop the vTPM')
  .argument('<vm>', 'VM UUID')
  .option('--host <name>', 'only if it runs on this host')
  .action(async (vm: string, options: { host?: string }, command: Command) => {
    const stopped = await (await client(command)).request<VtpmView>(
      'POST',
      `${vmPath(vm)}/stop`,
      options.host === undefined ? undefined : { host: options.host },
    );
    emit(command, stopped, () => showVtpm(stopped));
  });

withClientOptions(program.command('update'))
  .description('change secure boot of a stopped UEFI guest (its variable store starts afresh)')
  .argument('<vm>', 'VM UUID')
  .addOption(new Option('--secure-boot <state>', 'secure boot').choices(['on', 'off']).makeOptionMandatory())
  .action(async (vm: string, options: { secureBoot: 'on' | 'off' }, command: Command) => {
    const updated = await (await client(command)).request<VtpmView>('PATCH', vmPath(vm), {
      secure_boot: options.secureBoot === 'on',
    });
    emit(command, updated, () => showVtpm(updated));
  });

withClientOptions(program.command('delete'))
  .description('delete the vTPM: its secret is destroyed (crypto-erase), then its state')
  .argument('<vm>', 'VM UUID')
  .option('--force', 'stop it first if it is running', false)
  .action(async (vm: string, options: { force: boolean }, command: Command) => {
    await (await client(command)).request<void>('DELETE', `${vmPath(vm)}${options.force ? '?force=true' : ''}`);
    emit(command, { vm, deleted: true }, () => `deleted vTPM ${vm}`);
  });

withClientOptions(program.command('qemu-args'))
  .description('QEMU arguments that attach a guest to the vTPM')
  .argument('<vm>', 'VM UUID')
  .action(async (vm: string, _options: unknown, command: Command) => {
    const attachment = await (await client(command)).request<Attachment>('GET', `${vmPath(vm)}/attachment`);
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
    emit(command, { certificates: chosen }, () => chosen.map((c) => c.pem.trimEnd()).join('\n'));
  });

withClientOptions(program.command('history'))
  .description('state generations of the vTPM in the vault, newest first')
  .argument('<vm>', 'VM UUID')
  .action(async (vm: string, _options: unknown, command: Command) => {
    const { generations } = await (await client(command)).request<{ generations: GenerationView[] }>(
      'GET',
      `${vmPath(vm)}/generations`,
    );
    emit(command, generations, () =>
      table(
        generations.map((g) => ({
          generation: g.generation,
          kind: g.kind,
          size: g.size,
          digest: g.digest.slice(0, 16),
          reason: g.reason,
          time: g.created_at,
        })),
        ['generation', 'kind', 'size', 'digest', 'reason', 'time'],
      ),
    );
  });

withClientOptions(program.command('restore'))
  .description('make an older state generation the newest again (stopped vTPMs only; nothing is deleted)')
  .argument('<vm>', 'VM UUID')
  .requiredOption('--generation <n>', 'generation to restore', positiveInteger('--generation'))
  .action(async (vm: string, options: { generation: number }, command: Command) => {
    const restored = await (await client(command)).request<Restored>('POST', `${vmPath(vm)}/restore`, {
      generation: options.generation,
    });
    emit(
      command,
      restored,
      () => `restored generation ${options.generation} of ${vm} as generation ${restored.generation}`,
    );
  });

/** The bundle passphrase never goes on a command line, where `ps` would show it. */
async function bundlePassphrase(file: string | undefined): Promise<string> {
  if (file !== undefined) return (await readFile(file, 'utf8')).replace(/\r?\n$/, '');
  const fromEnv = process.env.VTPM_BUNDLE_PASSPHRASE;
  if (fromEnv) return fromEnv;
  throw new InvalidArgumentError(
    '--passphrase-file',
    'a file holding the bundle passphrase (or set VTPM_BUNDLE_PASSPHRASE)',
  );
}

function generationCount(value: string): number | 'all' {
  return value === 'all' ? 'all' : positiveInteger('--generations')(value);
}

withClientOptions(program.command('export'))
  .description('write the vTPM to a portable bundle sealed with a passphrase')
  .argument('<vm>', 'VM UUID')
  .requiredOption('--out <file>', 'bundle file to write (mode 0600)')
  .option('--generations <count|all>', 'newest generations of each kind of state to include', generationCount, 1)
  .option('--passphrase-file <file>', 'file holding the passphrase (or set VTPM_BUNDLE_PASSPHRASE)')
  .action(
    async (
      vm: string,
      options: { out: string; generations: number | 'all'; passphraseFile?: string },
      command: Command,
    ) => {
      const passphrase = await bundlePassphrase(options.passphraseFile);
      const { bundle } = await (await client(command)).request<{ bundle: string }>('POST', `${vmPath(vm)}/export`, {
        passphrase,
        generations: options.generations,
      });
      const bytes = Buffer.from(bundle, 'base64');
      await writeFile(options.out, bytes, { mode: 0o600 });
      emit(
        command,
        { vm, out: options.out, bytes: bytes.length },
        () => `exported vTPM ${vm} to ${options.out} (${bytes.length} bytes)`,
      );
    },
  );

withClientOptions(program.command('import'))
  .description('create a vTPM from an exported bundle, here or on another deployment')
  .argument('<file>', 'bundle written by vtpm export')
  .option('--vm <uuid>', 'import under this VM UUID instead of the exported one')
  .option('--passphrase-file <file>', 'file holding the passphrase (or set VTPM_BUNDLE_PASSPHRASE)')
  .action(async (file: string, options: { vm?: string; passphraseFile?: string }, command: Command) => {
    const passphrase = await bundlePassphrase(options.passphraseFile);
    const bundle = (await readFile(file)).toString('base64');
    const imported = await (await client(command)).request<VtpmView>('POST', '/v1/vtpms/import', {
      bundle,
      passphrase,
      ...(options.vm && { vm: options.vm }),
    });
    emit(command, imported, () => showVtpm(imported));
  });

withClientOptions(program.command('pool'))
  .description('TPMs manufactured ahead of demand, per version')
  .action(async (_options: unknown, command: Command) => {
    const pool = await (await client(command)).request<PoolStatus>('GET', '/v1/pool');
    emit(command, pool, () =>
      table(
        Object.entries(pool.ready).map(([version, ready]) => ({ version, ready, target: pool.size })),
        ['version', 'ready', 'target'],
      ),
    );
  });

withClientOptions(program.command('hosts'))
  .description('hosts, their traits and how many vTPMs they hold')
  .action(async (_options: unknown, command: Command) => {
    const { hosts } = await (await client(command)).request<HostList>('GET', '/v1/hosts');
    emit(command, hosts, () =>
      table(
        hosts.map((h) => ({
          name: h.name,
          vtpms: h.vtpms,
          running: h.running,
          traits: h.traits.join(','),
          agent: h.agent_url ?? '(in vtpm serve)',
        })),
        ['name', 'vtpms', 'running', 'traits', 'agent'],
      ),
    );
  });

function sealingTpm(seal: boolean, hostTpm: string | undefined): string | undefined {
  if (!seal && hostTpm !== undefined) throw new InvalidArgumentError('--host-tpm', 'to come with --seal-to-tpm');
  return seal ? (hostTpm ?? DEFAULT_HOST_TPM) : undefined;
}

function tlsOf(
  certFile: string | undefined,
  keyFile: string | undefined,
): { certFile: string; keyFile: string } | undefined {
  if (certFile === undefined && keyFile === undefined) return undefined;
  if (certFile === undefined || keyFile === undefined)
    throw new InvalidArgumentError(
      certFile === undefined ? '--tls-cert' : '--tls-key',
      'both --tls-cert and --tls-key, or neither',
    );
  return { certFile, keyFile };
}

registerLibvirtCommands(program);
registerIdentityCommands(program);
registerHostCommands(program);

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
