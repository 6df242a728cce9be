/**
 * A real libvirtd for the tests, started without systemd as on these machines
 * (the test setup installs libvirt-daemon, libvirt-daemon-driver-qemu and
 * libvirt-clients): QEMU runs as root with no security driver, so that it can
 * reach sockets and state in the test's directories.
 *
 * Domains boot the test guest (Debian cloud kernel + busybox initramfs) with
 * software emulation; the guest's serial console goes to a file.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { setTimeout as delay } from 'node:timers/promises';

const exec = promisify(execFile);
export const LIBVIRT_URI = 'qemu:///system';
const QEMU_CONF = '/etc/libvirt/qemu.conf';
const TEST_SETTINGS = ['user = "root"', 'group = "root"', 'security_driver = "none"'];

export async function virsh(...args: string[]): Promise<string> {
  return (await exec('virsh', ['-c', LIBVIRT_URI, ...args], { timeout: 120_000 })).stdout;
}

async function running(program: string): Promise<boolean> {
  return exec('pgrep', ['-x', program]).then(() => true, () => false);
}

async function ensureUserAndGroups(): Promise<void> {
  // Debian's libvirt expects these to exist (the -system package would create them).
  for (const group of ['kvm', 'libvirt-qemu']) await exec('getent', ['group', group]).catch(() => exec('groupadd', ['-r', group]));
  await exec('id', ['libvirt-qemu']).catch(() => exec('useradd', ['-r', '-g', 'libvirt-qemu', 'libvirt-qemu']));
}

/** Starts virtlogd and libvirtd unless they run, with the test settings in qemu.conf; resolves once libvirt answers. */
export async function ensureLibvirtd(): Promise<void> {
  await ensureUserAndGroups();
  for (const dir of ['/var/log/libvirt', '/run/libvirt', '/var/lib/libvirt/qemu']) await mkdir(dir, { recursive: true });
  const conf = existsSync(QEMU_CONF) ? await readFile(QEMU_CONF, 'utf8') : '';
  const missing = TEST_SETTINGS.filter((line) => !conf.split('\n').includes(line));
  if (missing.length > 0) {
    await writeFile(QEMU_CONF, conf + (conf.endsWith('\n') || conf === '' ? '' : '\n') + missing.join('\n') + '\n');
    if (await running('libvirtd')) await stopLibvirtd();
  }
  if (!(await running('virtlogd'))) await exec('virtlogd', ['-d']);
  if (!(await running('libvirtd'))) await exec('libvirtd', ['-d']);
  for (let i = 0; i < 100; i += 1) {
    if (await virsh('version').then(() => true, () => false)) return;
    await delay(100);
  }
  throw new Error('libvirtd did not answer within 10 s');
}

async function stopLibvirtd(): Promise<void> {
  await exec('pkill', ['-x', 'libvirtd']).catch(() => undefined);
  while (await running('libvirtd')) await delay(50);
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
${domain.tpmXml ? domain.tpmXml.split('\n').map((line) => `    ${line}`).join('\n') + '\n' : ''}  </devices>
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
    if (Date.now() > deadline) throw new Error(`domain ${domain.name} did not shut off; console:\n${await readFile(domain.console, 'utf8').catch(() => '')}`);
    await delay(200);
  }
  return readFile(domain.console, 'utf8');
}
