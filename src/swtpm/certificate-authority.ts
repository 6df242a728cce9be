/**
 * The deployment's own EK and platform certificate authority, kept in the data
 * directory rather than in /var/lib/swtpm-localca (shared with libvirt, owned
 * by whoever ran swtpm_setup first), and named after the deployment
 * (create-authority.ts makes it on first use). An existing CA stays as it
 * is, whatever name it has: a CA is never re-keyed behind its users' backs.
 *
 * Its private keys are encrypted PEM files; their passwords are secrets in the
 * key manager. The configuration that carries the signing-key password exists
 * only in a private scratch directory on a memory file system, for the few
 * hundred milliseconds that swtpm_setup or swtpm_localca runs, and so does the
 * copy swtpm_localca makes of that password for swtpm_cert (in TMPDIR).
 */
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { HostSetupError } from '../errors.js';
import { fileExists, filesOf, writeFileAtomically } from '../keys/files.js';
import { authorityNames } from './ca-name.js';
import { AUTHORITY_FILES, createAuthority, rewrappedKey } from './create-authority.js';
import { childEnvironment } from './run-program.js';

export interface CaPasswords {
  signing: string;
  root: string;
}

export interface PreparedAuthority {
  /** swtpm_setup --config */
  setupConfigPath: string;
  /** swtpm_localca --configfile and --optsfile */
  localcaConfigPath: string;
  localcaOptionsPath: string;
  /** Environment for swtpm_setup and swtpm_localca. */
  env: Record<string, string>;
}

const PLATFORM_OPTIONS = ['--platform-manufacturer vtpm-manager', '--platform-version 1.0', '--platform-model QEMU'];

export class CertificateAuthority {
  private established: Promise<void> | undefined;

  constructor(
    readonly dir: string,
    /** The deployment's name, which a CA made here carries. */
    readonly name: string,
    private readonly passwords: () => Promise<CaPasswords>,
    private readonly logger?: Logger,
  ) {}

  /** The certificate of the CA that signs EK and platform certificates (PEM). */
  get issuerCertificatePath(): string {
    return join(this.dir, AUTHORITY_FILES.issuerCertificate);
  }

  get rootCertificatePath(): string {
    return join(this.dir, AUTHORITY_FILES.rootCertificate);
  }

  /** Writes the configuration files swtpm_setup needs into `scratchDir`, which the caller removes. */
  async prepare(scratchDir: string): Promise<PreparedAuthority> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const passwords = await this.passwords();
    this.established ??= this.establish(passwords, join(scratchDir, 'new-ca')).catch((error: unknown) => {
      this.established = undefined;
      throw error;
    });
    await this.established;
    const localcaConfigPath = join(scratchDir, 'swtpm-localca.conf');
    const localcaOptionsPath = join(scratchDir, 'swtpm-localca.options');
    const setupConfigPath = join(scratchDir, 'swtpm_setup.conf');
    await writeFile(
      localcaConfigPath,
      [
        `statedir = ${this.dir}`,
        `signingkey = ${join(this.dir, AUTHORITY_FILES.signingKey)}`,
        `signingkey_password = ${passwords.signing}`,
        `issuercert = ${this.issuerCertificatePath}`,
        `certserial = ${join(this.dir, AUTHORITY_FILES.serial)}`,
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    await writeFile(localcaOptionsPath, PLATFORM_OPTIONS.join('\n') + '\n', { mode: 0o600 });
    await writeFile(
      setupConfigPath,
      [
        'create_certs_tool = /usr/bin/swtpm_localca',
        `create_certs_tool_config = ${localcaConfigPath}`,
        `create_certs_tool_options = ${localcaOptionsPath}`,
        'active_pcr_banks = sha256',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    return { setupConfigPath, localcaConfigPath, localcaOptionsPath, env: { TMPDIR: scratchDir } };
  }

  /** Under swtpm_localca's lock, so that neither it nor a backup sees the CA half made. */
  private establish(passwords: CaPasswords, work: string): Promise<void> {
    return withAuthorityLock(this.dir, async () => {
      const made = await Promise.all(
        [AUTHORITY_FILES.signingKey, AUTHORITY_FILES.issuerCertificate].map((file) => fileExists(join(this.dir, file))),
      );
      if (!made.every(Boolean)) {
        await createAuthority(this.dir, this.name, passwords, work);
        this.logger?.info({ dir: this.dir, name: this.name }, "the deployment's CA was created");
        return;
      }
      const signingKey = join(this.dir, AUTHORITY_FILES.signingKey);
      const rewrapped = rewrappedKey(await readFile(signingKey, 'utf8'), passwords.signing);
      if (rewrapped !== undefined) {
        await writeFileAtomically(signingKey, Buffer.from(rewrapped));
        this.logger?.info({ dir: this.dir }, "the CA's signing key was written again with fewer key-stretching rounds");
      }
      const subject = new X509Certificate(await readFile(this.issuerCertificatePath)).subject;
      if (subject !== `CN=${authorityNames(this.name).issuer}`)
        this.logger?.warn(
          { dir: this.dir, subject, name: this.name },
          "the deployment's CA was made under another name and stays as it is (a CA is never re-keyed silently); " +
            'the CA name applies to a new data directory',
        );
    });
  }
}

/** swtpm_localca's lock in its state directory, which it holds (flock) while it issues a certificate. */
const LOCALCA_LOCK = '.lock.swtpm-localca';

/** Runs `work` holding swtpm_localca's lock, taken through flock(1), as Node has no flock of its own. */
async function withAuthorityLock<T>(dir: string, work: () => Promise<T>): Promise<T> {
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
    return await work();
  } finally {
    holder.stdin.end();
  }
}

/**
 * The CA's files as swtpm_localca leaves them between two certificates (its serial number file and, on first use,
 * its keys and certificates, are never caught half written), each named by its path under `base`; none while
 * the CA does not exist yet.
 */
export async function authorityFiles(dir: string, base: string): Promise<Array<{ path: string; data: Buffer }>> {
  if (!(await fileExists(dir))) return [];
  return withAuthorityLock(dir, () => filesOf(dir, base));
}
