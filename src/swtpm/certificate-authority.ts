/**
 * The deployment's own EK and platform certificate authority, kept in the data
 * directory rather than in /var/lib/swtpm-localca (shared with libvirt, owned
 * by whoever ran swtpm_setup first). swtpm_localca creates it on first use.
 *
 * Its private keys are encrypted PEM files; their passwords are secrets in the
 * key manager. The configuration that carries the signing-key password exists
 * only in a private scratch directory on a memory file system, for the few
 * hundred milliseconds that swtpm_setup runs.
 */
import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HostSetupError } from '../errors.js';
import { fileExists, filesOf } from '../keys/files.js';
import { childEnvironment } from './run-program.js';

export interface CaPasswords {
  signing: string;
  root: string;
}

export interface PreparedAuthority {
  /** swtpm_setup --config */
  setupConfigPath: string;
  /** Environment swtpm_setup passes down to swtpm_localca. */
  env: Record<string, string>;
}

const PLATFORM_OPTIONS = ['--platform-manufacturer vtpm-manager', '--platform-version 1.0', '--platform-model QEMU'];

export class CertificateAuthority {
  constructor(
    readonly dir: string,
    private readonly passwords: () => Promise<CaPasswords>,
  ) {}

  /** Writes the configuration files swtpm_setup needs into `scratchDir`, which the caller removes. */
  async prepare(scratchDir: string): Promise<PreparedAuthority> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const { signing, root } = await this.passwords();
    const localcaConfig = join(scratchDir, 'swtpm-localca.conf');
    const localcaOptions = join(scratchDir, 'swtpm-localca.options');
    const setupConfigPath = join(scratchDir, 'swtpm_setup.conf');
    await writeFile(
      localcaConfig,
      [
        `statedir = ${this.dir}`,
        `signingkey = ${join(this.dir, 'signkey.pem')}`,
        `signingkey_password = ${signing}`,
        `issuercert = ${join(this.dir, 'issuercert.pem')}`,
        `certserial = ${join(this.dir, 'certserial')}`,
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    await writeFile(localcaOptions, PLATFORM_OPTIONS.join('\n') + '\n', { mode: 0o600 });
    await writeFile(
      setupConfigPath,
      [
        'create_certs_tool = /usr/bin/swtpm_localca',
        `create_certs_tool_config = ${localcaConfig}`,
        `create_certs_tool_options = ${localcaOptions}`,
        'active_pcr_banks = sha256',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    return { setupConfigPath, env: { SWTPM_ROOTCA_PASSWORD: root } };
  }
}

/** swtpm_localca's lock in its state directory, which it holds (flock) while it issues a certificate. */
const LOCALCA_LOCK = '.lock.swtpm-localca';

/**
 * The CA's files as swtpm_localca leaves them between two certificates (its serial number file and, on first use,
 * its keys and certificates, are never caught half written), each named by its path under `base`; none while
 * the CA does not exist yet. The lock is taken through flock(1), as Node has no flock of its own.
 */
export async function authorityFiles(dir: string, base: string): Promise<Array<{ path: string; data: Buffer }>> {
  if (!(await fileExists(dir))) return [];
  const holder = spawn('flock', ['--exclusive', join(dir, LOCALCA_LOCK), 'sh', '-c', 'echo locked; exec cat'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: childEnvironment(),
  });
  try {
    await new Promise<void>((resolve, reject) => {
      let errors = '';
      holder.stderr.on('data', (chunk: Buffer) => (errors += chunk.toString()));
      holder.stdout.once('data', () => resolve());
      holder.once('error', (error) => reject(new HostSetupError(`flock(1) could not run: ${error.message}`)));
      holder.once('exit', (code) =>
        reject(new HostSetupError(`flock(1) could not lock the CA in ${dir} (exit ${code}): ${errors.trim()}`)),
      );
    });
    return await filesOf(dir, base);
  } finally {
    holder.stdin.end();
  }
}
