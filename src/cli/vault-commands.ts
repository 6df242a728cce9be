/** `vtpm history`, `restore`, `export`, `import`: a vTPM's generations in the vault, and bundles. */
import { writeFile } from 'node:fs/promises';
import { type Command, Option } from 'commander';
import type { GenerationView, Restored, VtpmView } from '../api/vtpms.js';
import { InvalidArgumentError } from '../errors.js';
import { client, emit, vmPath, withClientOptions } from './context.js';
import { showVtpm, table } from './output.js';
import { positiveInteger, readArgumentFile } from './parsers.js';

/** The API takes a bundle as base64 in a request of at most 32 MiB. */
const BUNDLE_FILE_LIMIT = 24 * 1024 * 1024;
const PASSPHRASE_FILE_LIMIT = 64 * 1024;

/** The bundle passphrase never goes on a command line, where `ps` would show it. */
export async function bundlePassphrase(file: string | undefined): Promise<string> {
  if (file !== undefined) {
    const content = await readArgumentFile(file, '--passphrase-file', 'the passphrase', PASSPHRASE_FILE_LIMIT);
    return content.toString('utf8').replace(/\r?\n$/, '');
  }
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

export function registerVaultCommands(program: Command): void {
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
        await writeFile(options.out, bytes, { mode: 0o600 }).catch((error: NodeJS.ErrnoException) => {
          if (!['ENOENT', 'ENOTDIR', 'EISDIR', 'EACCES', 'EROFS'].includes(error.code ?? '')) throw error;
          throw new InvalidArgumentError(
            '--out',
            'a file that can be written, in a directory that exists',
            options.out,
          );
        });
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
    .addOption(
      new Option('--move', "when the bundle's VM still has its vTPM here: crypto-erase it once imported").conflicts(
        'clone',
      ),
    )
    .option('--clone', "when the bundle's VM still has its vTPM here: keep both (the two VMs share one EK)")
    .action(
      async (
        file: string,
        options: { vm?: string; passphraseFile?: string; move?: boolean; clone?: boolean },
        command: Command,
      ) => {
        const passphrase = await bundlePassphrase(options.passphraseFile);
        const bundle = (await readArgumentFile(file, 'file', 'a bundle', BUNDLE_FILE_LIMIT)).toString('base64');
        const original = options.move ? 'move' : options.clone ? 'clone' : undefined;
        const imported = await (await client(command)).request<VtpmView>('POST', '/v1/vtpms/import', {
          bundle,
          passphrase,
          ...(options.vm && { vm: options.vm }),
          ...(original && { original }),
        });
        if (original === 'clone')
          process.stderr.write(
            'vtpm: warning: two VMs now have one TPM identity (the same EK); attestation cannot tell them apart\n',
          );
        emit(command, imported, () => showVtpm(imported));
      },
    );
}
