/**
 * A real guest in seconds: the Debian cloud kernel (TPM TIS and CRB drivers
 * built in) with a busybox initramfs whose init sends raw TPM commands to
 * /dev/tpm0 and prints the responses on the serial console, then powers off.
 */
import { execFile, spawn } from 'node:child_process';
import { chmod, copyFile, mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { EK_CERTIFICATE_INDICES, tpm2 } from '../../../src/swtpm/tpm2-commands.js';

const exec = promisify(execFile);

/** TPM 2.0 commands, sent in the order of their names. */
const TPM2_COMMANDS: Record<string, string> = {
  // TPM2_ClockSet to CLOCK_SET_TO ms, with the owner's empty password: changes the persistent state.
  // Refused harmlessly (TPM_RC_VALUE) once the clock is past it.
  clockset:
    '8002' +
    '00000023' +
    '00000128' +
    '40000001' +
    '00000009' +
    '40000009' +
    '0000' +
    '00' +
    '0000' +
    '0000001000000000',
  // TPM2_ReadClock: the response carries resetCount, which grows with every boot and lives in the permanent state.
  readclock: '8001' + '0000000a' + '00000181',
  // TPM2_ReadPublic of the RSA EK that swtpm_setup persisted at 0x81010001.
  ekpublic: '8001' + '0000000e' + '00000173' + '81010001',
};

/** The NV index of the nv command set, and what the guest writes there. */
const GUEST_NV_INDEX = 0x0150_0077;
export const GUEST_NV_DATA = Buffer.from('guest-wrote-this');

/**
 * Further TPM 2.0 command sets, chosen with vtpm.set=NAME on the kernel command
 * line. nv reads the guest's NV index (which fails until a boot has written
 * it), defines it (which fails once it exists), writes it, then reads the
 * RSA EK certificate's NV index (public area and the certificate's bytes) and
 * the EK's public key: two boots of the same TPM print the same responses
 * from 1-data on, except on the first.
 */
const TPM2_COMMAND_SETS: Record<string, Record<string, Buffer>> = {
  nv: {
    '1-data': tpm2.nvRead(GUEST_NV_INDEX, GUEST_NV_DATA.length, 0),
    '2-define': tpm2.nvDefineSpace(GUEST_NV_INDEX, GUEST_NV_DATA.length),
    '3-write': tpm2.nvWrite(GUEST_NV_INDEX, GUEST_NV_DATA),
    '4-ekcert-public': tpm2.nvReadPublic(EK_CERTIFICATE_INDICES.rsa2048!),
    '5-ekcert-0': tpm2.nvRead(EK_CERTIFICATE_INDICES.rsa2048!, 512, 0),
    '6-ekcert-512': tpm2.nvRead(EK_CERTIFICATE_INDICES.rsa2048!, 256, 512),
    '7-ekpublic': Buffer.from(TPM2_COMMANDS.ekpublic!, 'hex'),
  },
};

/** TPM 1.2: TPM_ReadPubek with a 20-byte anti-replay nonce. */
const TPM12_COMMANDS: Record<string, string> = {
  ekpublic: '00c1' + '0000001e' + '0000007c' + '11'.repeat(20),
};

/** The clock value TPM2_ClockSet asks for: a clock at or past it proves the set reached the state. */
export const CLOCK_SET_TO = 0x10_0000_0000;

const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "VTPM-DEVICES $(ls /dev/tpm* 2>/dev/null | tr '\\n' ' ')"
major=$(cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null)
echo "VTPM-VERSION $major"
delay=$(sed -n 's/.*vtpm.delay=\\([0-9]*\\).*/\\1/p' /proc/cmdline)
if [ -n "$delay" ]; then echo VTPM-WAITING; sleep "$delay"; fi
if [ -e /dev/tpm0 ]; then
  named=$(sed -n 's/.*vtpm.set=\\([a-z0-9]*\\).*/\\1/p' /proc/cmdline)
  [ "$major" = 2 ] && set=/cmds/2\${named:+-$named} || set=/cmds/1
  for cmd in $set/*; do
    name=$(basename $cmd)
    exec 3<>/dev/tpm0
    cat $cmd >&3
    dd bs=4096 count=1 <&3 2>/dev/null > /tmp/rsp
    exec 3>&-
    echo "VTPM-RSP $name $(hexdump -v -e '/1 "%02x"' /tmp/rsp)"
  done
fi
load=$(sed -n 's/.*vtpm.load=\\([0-9]*\\).*/\\1/p' /proc/cmdline)
if [ -n "$load" ] && [ -e /dev/tpm0 ]; then
  exec 3<>/dev/tpm0
  i=0
  start=$(cut -d' ' -f1 /proc/uptime)
  while [ $i -lt "$load" ]; do
    cat /load/getrandom >&3
    dd bs=4096 count=1 <&3 2>/dev/null > /dev/null
    i=$((i + 1))
  done
  echo "VTPM-LOAD $load $start $(cut -d' ' -f1 /proc/uptime)"
  exec 3>&-
fi
hold=$(sed -n 's/.*vtpm.hold=\\([0-9]*\\).*/\\1/p' /proc/cmdline)
if [ -n "$hold" ]; then echo VTPM-HOLDING; sleep "$hold"; fi
echo VTPM-DONE
poweroff -f
`;

export async function findKernel(): Promise<string> {
  const kernels = (await readdir('/boot')).filter((f) => /^vmlinuz-.*-cloud-amd64$/.test(f)).sort();
  const kernel = kernels.at(-1);
  if (!kernel) throw new Error('no /boot/vmlinuz-*-cloud-amd64: the test setup installs linux-image-cloud-amd64');
  return join('/boot', kernel);
}

/** Builds the initramfs into `dir` and returns its path; `init` replaces the guest's script (the fault suite's). */
export async function buildInitramfs(dir: string, init = INIT): Promise<string> {
  const root = join(dir, 'initrd');
  for (const sub of ['bin', 'dev', 'proc', 'sys', 'tmp', 'cmds/1', 'cmds/2', 'load'])
    await mkdir(join(root, sub), { recursive: true });
  // TPM2_GetRandom of 16 bytes: the load loop's command, which reads nothing from and writes nothing to the state.
  await writeFile(join(root, 'load/getrandom'), Buffer.from('8001' + '0000000c' + '0000017b' + '0010', 'hex'));
  await copyFile('/bin/busybox', join(root, 'bin/busybox'));
  await writeFile(join(root, 'init'), init);
  await chmod(join(root, 'init'), 0o755);
  for (const [name, hex] of Object.entries(TPM2_COMMANDS))
    await writeFile(join(root, 'cmds/2', name), Buffer.from(hex, 'hex'));
  for (const [name, hex] of Object.entries(TPM12_COMMANDS))
    await writeFile(join(root, 'cmds/1', name), Buffer.from(hex, 'hex'));
  for (const [set, commands] of Object.entries(TPM2_COMMAND_SETS)) {
    await mkdir(join(root, `cmds/2-${set}`));
    for (const [name, command] of Object.entries(commands)) await writeFile(join(root, `cmds/2-${set}`, name), command);
  }
  const image = join(dir, 'initrd.gz');
  await exec('sh', ['-c', `cd "${root}" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "${image}"`]);
  return image;
}

export interface GuestReport {
  /** Commands per second of the load loop, by the guest's clock, when one ran. */
  loadRate?: number;
  devices: string[];
  version: string;
  /** Raw TPM responses by command name. */
  responses: Record<string, Buffer>;
  console: string;
}

export interface BootOptions {
  kernel: string;
  initramfs: string;
  /** The TPM arguments the product returned. */
  qemuArgs: string[];
  /** Seconds the guest stays up after its TPM commands, before it powers off. */
  holdSeconds?: number;
  /** Seconds the guest waits before its TPM commands (the firmware has already started the TPM). */
  delaySeconds?: number;
  /** A named TPM 2.0 command set instead of the default one. */
  commandSet?: 'nv';
  /** TPM2_GetRandom commands the guest sends in a loop, timed by its own clock (VTPM-LOAD line). */
  loadCommands?: number;
  /** More QEMU arguments: a QMP socket, or -incoming for the destination of a migration. */
  extraArgs?: string[];
  /** More kernel command-line parameters, for an initramfs of another `init`. */
  append?: string[];
  timeoutMs?: number;
}

/** Starts QEMU; `report` resolves with what the guest printed once it powered off. */
export interface RunningGuest {
  pid: number;
  kill: (signal: NodeJS.Signals) => void;
  /** True once the guest has sent its TPM commands and is holding. */
  holding: () => boolean;
  /** True once the guest waits before its TPM commands. */
  waiting: () => boolean;
  /** performance.now() when the console first showed a TPM response, once it has. */
  tpmAnsweredAt: () => number | undefined;
  /** What the guest printed on its console so far. */
  console: () => string;
  report: Promise<GuestReport>;
}

export function launchGuest(options: BootOptions): RunningGuest {
  // TCG by default: a /dev/kvm inside a VM is often nested and unusable (QEMU fails on MSRs or the guest hangs).
  const accel = process.env.VTPM_TEST_QEMU_ACCEL ?? 'tcg';
  const qemu = spawn(
    'qemu-system-x86_64',
    [
      '-machine',
      `q35,accel=${accel}`,
      '-m',
      '256',
      '-nographic',
      '-no-reboot',
      '-kernel',
      options.kernel,
      '-initrd',
      options.initramfs,
      '-append',
      [
        'console=ttyS0 panic=-1 quiet',
        ...(options.holdSeconds ? [`vtpm.hold=${options.holdSeconds}`] : []),
        ...(options.delaySeconds ? [`vtpm.delay=${options.delaySeconds}`] : []),
        ...(options.loadCommands ? [`vtpm.load=${options.loadCommands}`] : []),
        ...(options.commandSet ? [`vtpm.set=${options.commandSet}`] : []),
        ...(options.append ?? []),
      ].join(' '),
      ...options.qemuArgs,
      ...(options.extraArgs ?? []),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  let tpmAnsweredAt: number | undefined;
  qemu.stdout.on('data', (chunk: Buffer) => {
    output += chunk.toString('latin1');
    if (tpmAnsweredAt === undefined && output.includes('VTPM-RSP')) tpmAnsweredAt = performance.now();
  });
  qemu.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('latin1')));
  const timer = setTimeout(() => qemu.kill('SIGKILL'), options.timeoutMs ?? 180_000);
  const report = new Promise<GuestReport>((resolve, reject) => {
    qemu.on('error', reject);
    qemu.on('close', (code, signal) => {
      clearTimeout(timer);
      if (!output.includes('VTPM-DONE')) {
        reject(
          new Error(`guest did not finish (QEMU ${signal ?? `status ${code}`}); console:\n${output.slice(-3000)}`),
        );
        return;
      }
      const field = (name: string) => new RegExp(`${name} ?(.*)$`, 'm').exec(output)?.[1]?.trim() ?? '';
      const responses = responsesOf(output);
      const load = /VTPM-LOAD (\d+) ([\d.]+) ([\d.]+)/.exec(output);
      const loadRate = load ? Number(load[1]) / (Number(load[3]) - Number(load[2])) : undefined;
      resolve({
        ...(loadRate !== undefined && { loadRate }),
        devices: field('VTPM-DEVICES').split(/\s+/).filter(Boolean),
        version: field('VTPM-VERSION'),
        responses,
        console: output,
      });
    });
  });
  return {
    pid: qemu.pid!,
    kill: (signal) => qemu.kill(signal),
    holding: () => output.includes('VTPM-HOLDING'),
    waiting: () => output.includes('VTPM-WAITING'),
    tpmAnsweredAt: () => tpmAnsweredAt,
    console: () => output,
    report,
  };
}

/** Raw TPM responses a guest printed on its console, by command name. */
export function responsesOf(console: string): Record<string, Buffer> {
  const responses: Record<string, Buffer> = {};
  for (const match of console.matchAll(/VTPM-RSP (\S+) ?([0-9a-f]*)\s*$/gm))
    responses[match[1]!] = Buffer.from(match[2] ?? '', 'hex');
  return responses;
}

export function bootGuest(options: BootOptions): Promise<GuestReport> {
  return launchGuest(options).report;
}

/** resetCount from a TPM2_ReadClock response: header (10), time (8), clock (8), then resetCount (4). */
export function resetCountOf(readClock: Buffer): number {
  if (readClock.length < 30 || readClock.readUInt32BE(6) !== 0)
    throw new Error(`TPM2_ReadClock failed: ${readClock.toString('hex')}`);
  return readClock.readUInt32BE(26);
}

/** The clock (ms the TPM has been powered, persisted) from a TPM2_ReadClock response: bytes 18 to 26. */
export function clockOf(readClock: Buffer): number {
  if (readClock.length < 30 || readClock.readUInt32BE(6) !== 0)
    throw new Error(`TPM2_ReadClock failed: ${readClock.toString('hex')}`);
  return Number(readClock.readBigUInt64BE(18));
}

/** The TPM response code: bytes 6-9 of every TPM 1.2 and 2.0 response. */
export function responseCode(response: Buffer): number {
  return response.length >= 10 ? response.readUInt32BE(6) : -1;
}
