/** `vtpm serve`: the control plane with this host's agent, and its options. */
import type { Command } from 'commander';
import { Option } from 'commander';
import { InvalidArgumentError } from '../errors.js';
import { DEFAULT_HOST_TPM, KEY_MANAGER_KINDS, PIN_ENVIRONMENT, PKCS11_DEFAULTS } from '../keys/settings.js';
import { CA_NAME_RULE, defaultCaName, isCaName } from '../swtpm/ca-name.js';
import { DEFAULT_RETENTION } from '../vault/retention.js';
import { globals, withDataDir } from './context.js';
import { DEFAULT_LISTEN, defaultRunDir, defaultScratchDir } from './defaults.js';
import { positiveInteger, wholeNumber } from './parsers.js';

function sealingTpm(seal: boolean, hostTpm: string | undefined): string | undefined {
  if (!seal && hostTpm !== undefined) throw new InvalidArgumentError('--host-tpm', 'to come with --seal-to-tpm');
  return seal ? (hostTpm ?? DEFAULT_HOST_TPM) : undefined;
}

function caNameOf(name: string): string {
  if (!isCaName(name)) throw new InvalidArgumentError('--ca-name', CA_NAME_RULE, name);
  return name;
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

export function registerServeCommand(program: Command, packageVersion: string): void {
  withDataDir(program.command('serve'))
    .description("run the control plane and this host's agent (embedded defaults: SQLite, local key manager)")
    .option('--listen <host:port>', 'address to listen on', DEFAULT_LISTEN)
    .addOption(
      new Option(
        '--db <uri>',
        'the fleet database: postgresql://user@host[:port][,host2[:port]]/db[?target_session_attrs=read-write] ' +
          '(password from ~/.pgpass or PGPASSWORD; default: SQLite in the data directory)',
      ).env('VTPM_DB'),
    )
    .option('--run-dir <dir>', 'where swtpm sockets and pid files go (env VTPM_RUN_DIR; default <data-dir>/run)')
    .option('--scratch-dir <dir>', 'memory file system for short-lived secret configuration', defaultScratchDir())
    .addOption(
      new Option('--key-manager <kind>', 'key manager backend').choices([...KEY_MANAGER_KINDS]).default('local'),
    )
    .option(
      '--retention <count>',
      'newest state generations kept per vTPM',
      positiveInteger('--retention'),
      DEFAULT_RETENTION.newest,
    )
    .option(
      '--retention-days <days>',
      "beyond those, each day's last generation kept for this many days (0: none)",
      wholeNumber('--retention-days'),
      DEFAULT_RETENTION.days,
    )
    .option(
      '--host-down-after <seconds>',
      'a remote host whose agent has not been heard of for this long is down: nothing new is placed there',
      positiveInteger('--host-down-after'),
      15,
    )
    .option(
      '--max-vtpms <count>',
      'how many vTPMs this host may hold (default: no limit)',
      positiveInteger('--max-vtpms'),
    )
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
    .option(
      '--barbican-url <url>',
      "with --key-manager barbican: Barbican's endpoint, https://barbican:9311 (http only on loopback)",
    )
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
    .option(
      '--ca-name <name>',
      "the deployment's name, which its EK and platform CA carries when it is created " +
        '(an existing CA keeps its own)',
      defaultCaName(),
    )
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
          db?: string;
          runDir?: string;
          scratchDir: string;
          keyManager: string;
          retention: number;
          retentionDays: number;
          poolSize: number;
          maxVtpms?: number;
          poolRefillPause: number;
          swtpmUser?: string;
          qemuGroup?: string;
          agentCaFile?: string;
          hostDownAfter: number;
          caName: string;
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
        // Loaded here, not at the top: every other command would pay for loading the whole server and pino.
        const [{ processLogger }, { startServer }] = await Promise.all([
          import('./logger.js'),
          import('../serve/start-server.js'),
        ]);
        const logger = processLogger(options.logLevel, { service: 'vtpm' });
        const server = await startServer({
          dataDir,
          database: options.db,
          listen: options.listen,
          runDir: options.runDir ?? defaultRunDir(dataDir),
          scratchDir: options.scratchDir,
          keyManager: options.keyManager,
          retention: { newest: options.retention, days: options.retentionDays },
          poolSize: options.poolSize,
          maxVtpms: options.maxVtpms,
          poolRefillPauseMs: options.poolRefillPause,
          swtpmUser: options.swtpmUser,
          qemuGroup: options.qemuGroup,
          agentCaFile: options.agentCaFile,
          hostDownAfterMs: options.hostDownAfter * 1000,
          caName: caNameOf(options.caName),
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
}
