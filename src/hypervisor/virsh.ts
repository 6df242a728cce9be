/**
 * libvirt through virsh: the few calls vtpm-manager makes on a libvirt host
 * (read and redefine a domain, read a secret). virsh is on every libvirt host
 * and speaks whatever transport the connection URI names.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HostSetupError, NotFoundError, UnreachableError } from '../errors.js';
import { childEnvironment } from '../swtpm/run-program.js';
import { parseDomain, type Domain } from './libvirt-domain.js';
import { DEFAULT_LIBVIRT_URI } from './libvirt-uri.js';

const VIRSH_TIMEOUT_MS = 60_000;

const LIBVIRT_SECRETS_DIR = '/etc/libvirt/secrets';

export class Virsh {
  constructor(private readonly uri: string = DEFAULT_LIBVIRT_URI) {}

  /**
   * Runs virsh. `input`, when given, is what virsh reads from /dev/stdin, so
   * that secrets are never written to a file for it. Node gives a child a
   * socket as its standard input, which /dev/stdin cannot open (ENXIO), so a
   * `cat` in front turns it into a pipe.
   */
  private run(args: string[], input?: string): Promise<string> {
    const virshArgs = ['-c', this.uri, ...args];
    const [program, argv] =
      input === undefined ? ['virsh', virshArgs] : ['sh', ['-c', 'cat | virsh "$@"', 'sh', ...virshArgs]];
    return new Promise((resolve, reject) => {
      const child = execFile(
        program,
        argv,
        { timeout: VIRSH_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024, env: childEnvironment() },
        (error, stdout, stderr) => {
          if (!error) return resolve(stdout);
          // ENOENT: not on PATH; 127: the shell in front of it did not find it.
          const code = (error as { code?: unknown }).code;
          if (code === 'ENOENT' || code === 127)
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
      // An early exit closes the pipe; its status says why, so the pipe's own error is not reported.
      child.stdin?.on('error', () => undefined);
      child.stdin?.end(input);
    });
  }

  /** The persistent definition (what the next start uses). */
  domainXml(domain: string): Promise<string> {
    return this.run(['dumpxml', '--inactive', '--security-info', domain]);
  }

  /** Every defined domain's persistent definition, running or not. */
  async domains(): Promise<Domain[]> {
    const uuids = (await this.run(['list', '--all', '--uuid'])).split('\n').map((line) => line.trim());
    const domains: Domain[] = [];
    for (const uuid of uuids.filter(Boolean)) {
      // Undefined since it was listed: it is simply not there any more.
      const xml = await this.run(['dumpxml', '--inactive', uuid]).catch((error: unknown) => {
        if (error instanceof NotFoundError) return undefined;
        throw error;
      });
      if (xml !== undefined) domains.push(parseDomain(xml));
    }
    return domains;
  }

  async domainState(domain: string): Promise<string> {
    return (await this.run(['domstate', domain])).trim();
  }

  /**
   * Defines (or redefines) a domain. The XML came from `dumpxml --security-info`
   * and may carry graphics passwords, so it goes through virsh's standard
   * input and never touches a file.
   */
  async define(xml: string): Promise<void> {
    await this.run(['define', '/dev/stdin'], xml);
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
