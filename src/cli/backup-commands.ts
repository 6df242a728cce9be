/** `vtpm backup create` and `vtpm backup restore`: the whole deployment in one passphrase-sealed file. */
import { open } from 'node:fs/promises';
import type { Command } from 'commander';
import { InvalidArgumentError } from '../errors.js';
import { confirm } from './confirm.js';
import { client, emit, globals, withClientOptions } from './context.js';
import { readArgumentFile } from './parsers.js';
import { bundlePassphrase } from './vault-commands.js';

/** Node's largest Buffer on 64-bit platforms is 4 GiB; a backup is read whole to be authenticated. */
const BACKUP_FILE_LIMIT = 2 ** 32 - 1;

/** 0600 before the first byte lands, even over an existing file of a wider mode: the backup holds every key. */
async function writeOwnerOnly(path: string, bytes: Buffer): Promise<void> {
  const handle = await open(path, 'w', 0o600).catch((error: NodeJS.ErrnoException) => {
    if (!['ENOENT', 'ENOTDIR', 'EISDIR', 'EACCES', 'EROFS'].includes(error.code ?? '')) throw error;
    throw new InvalidArgumentError('--out', 'a file that can be written, in a directory that exists', path);
  });
  try {
    await handle.chmod(0o600);
    await handle.writeFile(bytes);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export function registerBackupCommands(program: Command): void {
  const backup = program
    .command('backup')
    .description('back up the whole deployment (database, keys, CA) and restore it (see docs/operations.md)');

  withClientOptions(backup.command('create'))
    .description('back up the running deployment, consistently, into one passphrase-sealed file (admin)')
    .requiredOption('--out <file>', 'backup file to write (mode 0600)')
    .option('--passphrase-file <file>', 'file holding the passphrase (or set VTPM_BUNDLE_PASSPHRASE)')
    .action(async (options: { out: string; passphraseFile?: string }, command: Command) => {
      const passphrase = await bundlePassphrase(options.passphraseFile);
      const taken = await (await client(command)).request<{ backup: string; files: number }>('POST', '/v1/backup', {
        passphrase,
      });
      const bytes = Buffer.from(taken.backup, 'base64');
      await writeOwnerOnly(options.out, bytes);
      emit(
        command,
        { out: options.out, bytes: bytes.length, files: taken.files },
        () => `backed up the deployment to ${options.out} (${taken.files} files, ${bytes.length} bytes)`,
      );
    });

  withClientOptions(backup.command('restore'))
    .description('restore a backup onto a data directory where no vtpm serve runs (offline)')
    .argument('<file>', 'backup written by vtpm backup create')
    .option('--passphrase-file <file>', 'file holding the passphrase (or set VTPM_BUNDLE_PASSPHRASE)')
    .option('--force', 'replace everything the data directory holds (asks first; --yes in scripts)', false)
    .option('--yes', 'with --force: do not ask (scripts); without a terminal --force needs it', false)
    .action(
      async (file: string, options: { passphraseFile?: string; force: boolean; yes: boolean }, command: Command) => {
        const passphrase = await bundlePassphrase(options.passphraseFile);
        const bytes = await readArgumentFile(file, 'file', 'a backup', BACKUP_FILE_LIMIT);
        const { restoreBackup } = await import('../backup/restore-backup.js');
        const restored = await restoreBackup(bytes, passphrase, globals(command).dataDir, {
          force: options.force,
          confirm: (question) => confirm(question, options.yes),
        });
        emit(
          command,
          restored,
          () =>
            `restored the backup of ${restored.created_at} (${restored.files} files) into ${restored.data_dir}; ` +
            `start it with vtpm serve --data-dir ${restored.data_dir} --key-manager ${restored.key_manager}`,
        );
      },
    );
}
