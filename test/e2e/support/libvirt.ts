/**
 * A real libvirtd for the tests, started without systemd as on these machines
 * (the test setup installs libvirt-daemon, libvirt-daemon-driver-qemu and
 * libvirt-clients): QEMU runs as libvirt's unprivileged libvirt-qemu user,
 * Debian's default (qemu.conf leaves user and group unset), with libvirt's
 * DAC ownership handling and no AppArmor profile (not every test machine has
 * AppArmor).
 *
 * Domains boot the test guest (Debian cloud kernel + busybox initramfs) with
 * software emulation; the guest's serial console goes to a file.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { setTimeout as delay } from 'node:timers/promises';

const exec = promisify(execFile);
const LIBVIRT_URI = 'qemu:///system';
const QEMU_CONF = '/etc/libvirt/qemu.conf';
export const QEMU_GROUP = 'libvirt-qemu';
const TEST_SETTINGS = ['security_driver = "none"'];
/** What earlier versions of these tests wrote, taken out again. */
const FORMER_SETTINGS = ['user = "root"', 'group = "root"', 'user = "libvirt-qemu"', 'group = "libvirt-qemu"'];

/**
 * The vtpm commands as `npm install -g` leaves them: links in a bin directory on PATH to the package's
 * programs, executable. The hook names the link, never the package's files.
 */
export async function installVtpmCommands(dir: string): Promise<string> {
  const bin = join(dir, 'bin');
  await mkdir(bin, { recursive: true });
  for (const [name, file] of Object.entries(PROGRAMS)) {
    const target = fileURLToPath(new URL(`../../../src/cli/${file}`, import.meta.url));
    await chmod(target, 0o755);
    await symlink(target, join(bin, name)).catch((error: { code?: string }) => {
      if (error.code !== 'EEXIST') throw error;
    });
  }
  process.env.PATH = `${bin}${delimiter}${process.env.PATH ?? ''}`;
  return bin;
}

const PROGRAMS = { vtpm: 'main.js', 'vtpm-libvirt-hook': 'libvirt-hook.js' };

export async function virsh(...args: string[]): Promise<string> {
  return (await exec('virsh', ['-c', LIBVIRT_URI, ...args], { timeout: 120_000 })).stdout;
}

/**
 * The daemon of this (the root) mount namespace, by its pid file: other
 * libvirtds may run on the machine in namespaces of their own (the migration
 * tests' hosts), and must be told apart.
 */
async function daemonPid(program: 'libvirtd' | 'virtlogd'): Promise<number | undefined> {
  const pid = Number((await readFile(`/run/${program}.pid`, 'utf8').catch(() => '')).trim());
  if (!pid) return undefined;
  const comm = (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim();
  return comm === program ? pid : undefined;
}

async function running(program: 'libvirtd' | 'virtlogd'): Promise<boolean> {
  return (await daemonPid(program)) !== undefined;
}

async function ensureUserAndGroups(): Promise<void> {
  // Debian's libvirt expects these to exist (the -system package would create them), libvirt-qemu in
  // group kvm: without it libvirt finds /dev/kvm inaccessible to QEMU and probes QEMU again on every call.
  for (const group of ['kvm', 'libvirt-qemu'])
    await exec('getent', ['group', group]).catch(() => exec('groupadd', ['-r', group]));
  await exec('id', ['libvirt-qemu']).catch(() => exec('useradd', ['-r', '-g', 'libvirt-qemu', 'libvirt-qemu']));
  await exec('usermod', ['-a', '-G', 'kvm', 'libvirt-qemu']);
}

/** Starts virtlogd and libvirtd unless they run, with the test settings in qemu.conf; resolves once libvirt answers. */
export async function ensureLibvirtd(): Promise<void> {
  await ensureUserAndGroups();
  for (const dir of ['/var/log/libvirt', '/run/libvirt', '/var/lib/libvirt/qemu'])
    await mkdir(dir, { recursive: true });
  const lines = (existsSync(QEMU_CONF) ? await readFile(QEMU_CONF, 'utf8') : '')
    .split('\n')
    .filter((line) => line !== '');
  const kept = lines.filter((line) => !FORMER_SETTINGS.includes(line));
  const missing = TEST_SETTINGS.filter((line) => !kept.includes(line));
  if (missing.length > 0 || kept.length !== lines.length) {
    await writeFile(QEMU_CONF, [...kept, ...missing].join('\n') + '\n');
    if (await running('libvirtd')) await stopLibvirtd();
  }
  if (!(await running('virtlogd'))) await exec('virtlogd', ['-d']);
  if (!(await running('libvirtd'))) await exec('libvirtd', ['-d']);
  for (let i = 0; i < 100; i += 1) {
    if (
      await virsh('version').then(
        () => true,
        () => false,
      )
    )
      return;
    await delay(100);
  }
  throw new Error('libvirtd did not answer within 10 s');
}

async function stopLibvirtd(): Promise<void> {
  const pid = await daemonPid('libvirtd');
  if (pid === undefined) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 30_000;
  while ((await daemonPid('libvirtd')) === pid) {
    if (Date.now() > deadline) process.kill(pid, 'SIGKILL');
    await delay(50);
  }
}

/** libvirt looks for hook scripts when it starts. */
export async function restartLibvirtd(): Promise<void> {
  await stopLibvirtd();
  await ensureLibvirtd();
}

export interface TestDomain {
  name: string;
  uuid: string;
  kernel: string;
  initramfs: string;
  console: string;
  /** Extra kernel arguments (vtpm.set=..., vtpm.hold=...). */
  append?: string;
  /** The <tpm> element, if any. */
  tpmXml?: string;
}

export function domainXml(domain: TestDomain): string {
  return `<domain type='qemu'>
  <name>${domain.name}</name>
  <uuid>${domain.uuid}</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>${domain.kernel}</kernel>
    <initrd>${domain.initramfs}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet ${domain.append ?? ''}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path='${domain.console}'/>
      <target port='0'/>
    </serial>
${
  domain.tpmXml
    ? domain.tpmXml
        .split('\n')
        .map((line) => `    ${line}`)
        .join('\n') + '\n'
    : ''
}  </devices>
</domain>
`;
}

export async function domainState(name: string): Promise<string> {
  return (await virsh('domstate', name)).trim();
}

/** Waits for the guest to power itself off, then returns its console output. */
export async function untilShutOff(domain: Pick<TestDomain, 'name' | 'console'>, timeoutMs = 180_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  while ((await domainState(domain.name)) !== 'shut off') {
    if (Date.now() > deadline)
      throw new Error(
        `domain ${domain.name} did not shut off; console:\n${await readFile(domain.console, 'utf8').catch(() => '')}`,
      );
    await delay(200);
  }
  return readFile(domain.console, 'utf8');
}

/** Waits until the guest's console shows `marker`, and returns the console. */
export async function waitForConsole(domain: TestDomain, marker: string, timeoutMs = 180_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const output = await readFile(domain.console, 'utf8').catch(() => '');
    if (output.includes(marker)) return output;
    if (Date.now() > deadline)
      throw new Error(`the guest of ${domain.name} never printed ${marker}; console:\n${output.slice(-3000)}`);
    await delay(200);
  }
}
