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
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

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
