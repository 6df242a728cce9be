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

/** Where libvirt's QEMU driver keeps its settings; present wherever that driver is installed. */
const LIBVIRT_QEMU_CONF = '/etc/libvirt/qemu.conf';
/** Debian builds libvirt with QEMU running as this user and group when qemu.conf leaves them unset. */
const DEBIAN_QEMU_ACCOUNT = 'libvirt-qemu';

/** The `user =` and `group =` settings of a libvirt qemu.conf, when set (the last one counts, as in libvirt). */
export function qemuAccountSettings(conf: string): { user?: string; group?: string } {
  const settings: { user?: string; group?: string } = {};
  for (const line of conf.split('\n')) {
    const match = /^\s*(user|group)\s*=\s*"([^"]*)"\s*(?:#.*)?$/.exec(line);
    if (match) settings[match[1] as 'user' | 'group'] = match[2]!;
  }
  return settings;
}

// libvirt spells a numeric id "+N".
const isRoot = (account: string) => account === 'root' || account === '+0';

async function lookUpGroup(name: string): Promise<SystemGroup | undefined> {
  const entry = await runProgram('getent', ['group', name.replace(/^\+/, '')]).then(
    (r) => r.stdout.trim(),
    () => undefined,
  );
  return entry === undefined ? undefined : { name: entry.split(':')[0]!, gid: Number(entry.split(':')[2]) };
}

const accountExists = (user: string) =>
  runProgram('id', ['-u', user.replace(/^\+/, '')]).then(
    () => true,
    () => false,
  );

/**
 * The group QEMU runs in, which the vTPM sockets and variable stores are shared with: `--qemu-group` when given
 * (root: QEMU runs as root and needs nothing shared), otherwise the one libvirt's qemu.conf names for the QEMU it
 * starts. Without libvirt, or when QEMU runs as root, nothing is shared.
 */
export async function qemuGroupFor(
  requested: string | undefined,
  qemuConf = LIBVIRT_QEMU_CONF,
): Promise<SystemGroup | undefined> {
  if (requested !== undefined) {
    if (isRoot(requested)) return undefined;
    const group = await lookUpGroup(requested);
    if (!group)
      throw new InvalidArgumentError(
        '--qemu-group',
        'an existing group, the one QEMU runs in ' +
          `(libvirt's: the group in ${LIBVIRT_QEMU_CONF}, ${DEBIAN_QEMU_ACCOUNT} on Debian)`,
        requested,
      );
    return group;
  }
  const conf = await readFile(qemuConf, 'utf8').catch(() => undefined);
  if (conf === undefined) return undefined;
  const settings = qemuAccountSettings(conf);
  const user = settings.user ?? DEBIAN_QEMU_ACCOUNT;
  const groupName = settings.group ?? DEBIAN_QEMU_ACCOUNT;
  if (isRoot(user)) return undefined;
  // Debian's libvirt-daemon-system creates the default account; without it libvirt starts no QEMU at all.
  if (settings.user === undefined && settings.group === undefined && !(await accountExists(user))) return undefined;
  const group = await lookUpGroup(groupName);
  if (!group) {
    const setting = settings.group === undefined ? "group (unset: Debian's default)" : `group = "${groupName}"`;
    throw new HostSetupError(
      `libvirt runs QEMU in group ${groupName} (${setting} in ${qemuConf}), which does not exist: ` +
        `create it, set group in ${qemuConf} to the group QEMU runs in, ` +
        'or pass --qemu-group (root when QEMU runs as root)',
      { qemu_conf: qemuConf },
    );
  }
  // Only root can give files to a group it is not in; a user's service serves the QEMU the user starts.
  if (process.getuid?.() !== 0 && !process.getgroups?.().includes(group.gid)) return undefined;
  return {
    ...group,
    remedy:
      `set user = "root" in ${qemuConf} (QEMU as root), ` +
      'or pass --qemu-group root if libvirt does not run QEMU here',
  };
}

export function parseListen(listen: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(listen);
  const port = Number(match?.[3]);
  if (!match || port > 65535) throw new InvalidArgumentError('listen', 'HOST:PORT such as 127.0.0.1:7390', listen);
  return { host: match[1] ?? match[2]!, port };
}
