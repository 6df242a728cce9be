/**
 * What a host agent needs of the machine, checked before it starts: the
 * user swtpm runs as, the group QEMU runs in, and the service's TLS key and
 * listen address. Shared by `vtpm serve` and `vtpm agent`.
 */
import { readFile, stat } from 'node:fs/promises';
import { HostSetupError, InvalidArgumentError } from '../errors.js';
import { runProgram } from '../swtpm/run-program.js';
import type { SystemGroup, SystemUser } from './host-directories.js';

const DEFAULT_SWTPM_USER = 'tss';

/** The TLS key must be the service's alone: refused when others may read it. */
export async function readTls(tls: { certFile: string; keyFile: string }): Promise<{ cert: Buffer; key: Buffer }> {
  const read = (field: string, path: string) =>
    readFile(path).catch(() => {
      throw new InvalidArgumentError(field, 'a readable PEM file', path);
    });
  const { mode } = await stat(tls.keyFile).catch(() => {
    throw new InvalidArgumentError('--tls-key', 'a readable PEM file', tls.keyFile);
  });
  if (mode & 0o077)
    throw new InvalidArgumentError(
      '--tls-key',
      `a key file only its owner can read (chmod 600 ${tls.keyFile}); it is ${(mode & 0o777).toString(8)}`,
    );
  return { cert: await read('--tls-cert', tls.certFile), key: await read('--tls-key', tls.keyFile) };
}

/** The unprivileged user for swtpm, when there is one to switch to. */
export async function swtpmUserFor(requested: string | undefined): Promise<SystemUser | undefined> {
  if (process.getuid?.() !== 0) {
    if (requested !== undefined)
      throw new HostSetupError(
        `--swtpm-user ${requested} needs the service to run as root (only root can switch users)`,
      );
    return undefined;
  }
  const name = requested ?? DEFAULT_SWTPM_USER;
  if (name === 'root') return undefined;
  const id = (flag: string) =>
    runProgram('id', [flag, name]).then(
      (r) => Number(r.stdout.trim()),
      () => {
        throw new HostSetupError(
          `the user ${name} that swtpm should run as does not exist (Debian's swtpm-tools creates tss); ` +
            'create it, or pass --swtpm-user',
        );
      },
    );
  return { name, uid: await id('-u'), gid: await id('-g') };
}

export async function qemuGroupFor(name: string | undefined): Promise<SystemGroup | undefined> {
  if (name === undefined) return undefined;
  const entry = await runProgram('getent', ['group', name]).then(
    (r) => r.stdout.trim(),
    () => {
      throw new InvalidArgumentError(
        '--qemu-group',
        'an existing group, the one QEMU runs in ' +
          "(libvirt's: the group in /etc/libvirt/qemu.conf, libvirt-qemu on Debian)",
        name,
      );
    },
  );
  return { name, gid: Number(entry.split(':')[2]) };
}

export function parseListen(listen: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(listen);
  const port = Number(match?.[3]);
  if (!match || port > 65535) throw new InvalidArgumentError('listen', 'HOST:PORT such as 127.0.0.1:7390', listen);
  return { host: match[1] ?? match[2]!, port };
}
