/**
 * libvirt through virsh: the few calls vtpm-manager makes on a libvirt host
 * (read and redefine a domain, read a secret). virsh is on every libvirt host
 * and speaks whatever transport the connection URI names.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostSetupError, NotFoundError, UnreachableError } from '../errors.js';
import { childEnvironment } from '../swtpm/run-program.js';

const VIRSH_TIMEOUT_MS = 60_000;

export const DEFAULT_LIBVIRT_URI = 'qemu:///system';
const LIBVIRT_SECRETS_DIR = '/etc/libvirt/secrets';

export class Virsh {
  constructor(private readonly uri: string = DEFAULT_LIBVIRT_URI) {}

  private run(args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(
        'virsh',
        ['-c', this.uri, ...args],
        { timeout: VIRSH_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024, env: childEnvironment() },
        (error, stdout, stderr) => {
          if (!error) return resolve(stdout);
          if ((error as NodeJS.ErrnoException).code === 'ENOENT')
            return reject(new HostSetupError('virsh is not installed on this host (Debian package libvirt-clients)'));
          const message = (stderr || error.message)
            .trim()
            .replace(/^error:\s*/gm, '')
            .split('\n')
            .join('; ');
          if (/failed to get domain|Domain not found/i.test(message))
            return reject(new NotFoundError('libvirt domain', args.at(-1) ?? ''));
          if (/failed to connect|Failed to connect socket/i.test(message))
            return reject(new UnreachableError(`cannot reach libvirt at ${this.uri}: ${message}`, { uri: this.uri }));
          reject(new HostSetupError(`virsh ${args[0]} failed: ${message}`, { uri: this.uri }));
        },
      );
    });
  }

  /** The persistent definition (what the next start uses). */
  domainXml(domain: string): Promise<string> {
    return this.run(['dumpxml', '--inactive', '--security-info', domain]);
  }

  async domainState(domain: string): Promise<string> {
    return (await this.run(['domstate', domain])).trim();
  }

  async define(xml: string): Promise<void> {
    const dir = await mkdtemp(join(tmpdir(), 'vtpm-virsh-'));
    try {
      await writeFile(join(dir, 'domain.xml'), xml, { mode: 0o600 });
      await this.run(['define', join(dir, 'domain.xml')]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /**
   * A secret's value, raw. libvirt does not hand out a private secret (Nova
   * makes its vTPM secrets private); on the host itself, root can read it
   * from libvirt's own secret store instead.
   */
  async secretValue(uuid: string): Promise<Buffer> {
    try {
      return Buffer.from((await this.run(['secret-get-value', uuid])).trim(), 'base64');
    } catch (error) {
      if (!(error instanceof HostSetupError && /private/i.test(error.message))) throw error;
      const stored = await readFile(join(LIBVIRT_SECRETS_DIR, `${uuid}.base64`), 'utf8').catch(() => undefined);
      if (stored === undefined)
        throw new HostSetupError(
          `libvirt secret ${uuid} is private and ${LIBVIRT_SECRETS_DIR} is not readable here: ` +
            'run this on the libvirt host, as root',
          { secret: uuid },
        );
      return Buffer.from(stored.trim(), 'base64');
    }
  }
}
