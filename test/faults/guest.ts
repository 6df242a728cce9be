/**
 * A real guest in a fault scenario: QEMU with the Debian cloud kernel and a
 * busybox initramfs (test/e2e/support/guest.ts) whose init reads a counter
 * from an NV index of its vTPM, prints it, then writes the next values in a
 * loop, printing each one the TPM answered (what the guest was told). With
 * vtpm.readonly=1 it only reads and powers off: "a new boot reads".
 */
import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { tpm2 } from '../../src/swtpm/tpm2-commands.js';
import { buildInitramfs, findKernel, launchGuest, type RunningGuest } from '../e2e/support/guest.js';

const GUEST_NV_INDEX = 0x0150_0fa2;
/** The counter as 8 decimal digits: the guest's shell can print them, and parse them back. */
const DIGITS = 8;

const commands = () => {
  const write = tpm2.nvWrite(GUEST_NV_INDEX, Buffer.alloc(DIGITS, '0'));
  return {
    read: tpm2.nvRead(GUEST_NV_INDEX, DIGITS, 0),
    define: tpm2.nvDefineSpace(GUEST_NV_INDEX, DIGITS),
    // The write is the prefix, the counter's digits, then the offset (2 bytes).
    'write-prefix': write.subarray(0, write.length - DIGITS - 2),
    'write-suffix': write.subarray(write.length - 2),
  };
};

const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
send() { exec 3<>/dev/tpm0; cat >&3; dd bs=4096 count=1 <&3 2>/dev/null > /tmp/rsp; exec 3>&-; }
rc() { dd if=/tmp/rsp bs=1 skip=6 count=4 2>/dev/null | hexdump -v -e '/1 "%02x"'; }
send < /nv/read
if [ "$(rc)" = 00000000 ]; then
  value=$(dd if=/tmp/rsp bs=1 skip=16 count=${DIGITS} 2>/dev/null | sed 's/^0*//')
else
  value=
fi
echo "VTPM-READ \${value:-0} $(rc)"
if grep -q vtpm.readonly=1 /proc/cmdline; then echo VTPM-DONE; poweroff -f; fi
send < /nv/define
i=\${value:-0}
while true; do
  i=$((i + 1))
  { cat /nv/write-prefix; printf '%0${DIGITS}d' $i; cat /nv/write-suffix; } | send
  code=$(rc)
  if [ "$code" = 00000000 ]; then echo "VTPM-ACK $i"; else echo "VTPM-NACK $i $code"; i=$((i - 1)); sleep 1; fi
done
`;

export interface GuestImage {
  kernel: string;
  initramfs: string;
}

export async function buildGuestImage(dir: string): Promise<GuestImage> {
  const initramfs = await buildInitramfs(dir, INIT);
  // The NV commands go in a second archive appended to the first: the kernel unpacks both.
  await mkdir(join(dir, 'nv'), { recursive: true });
  for (const [name, command] of Object.entries(commands())) await writeFile(join(dir, 'nv', name), command);
  return { kernel: await findKernel(), initramfs: await appendArchive(dir, initramfs, 'nv') };
}

async function appendArchive(dir: string, initramfs: string, sub: string): Promise<string> {
  await promisify(execFile)('sh', [
    '-c',
    `cd "${dir}" && find ${sub} | cpio -o -H newc 2>/dev/null | gzip -1 >> "${initramfs}"`,
  ]);
  return initramfs;
}

/** One boot of the guest on the QEMU arguments a start returned; `readOnly`: read the counter and power off. */
export class NvGuest {
  /** How much of the console newAcks has read. */
  private scanned = 0;

  private constructor(private readonly running: RunningGuest) {}

  static boot(image: GuestImage, qemuArgs: string[], readOnly: boolean, timeoutMs: number): NvGuest {
    const running = launchGuest({
      ...image,
      qemuArgs,
      append: readOnly ? ['vtpm.readonly=1'] : [],
      timeoutMs,
    });
    running.report.catch(() => undefined);
    return new NvGuest(running);
  }

  get pid(): number {
    return this.running.pid;
  }

  /** The counter this boot read from its TPM, once it printed it. */
  get read(): number | undefined {
    const match = /VTPM-READ (\d+)/.exec(this.running.console());
    return match ? Number(match[1]) : undefined;
  }

  /** The values the TPM answered as written that the console showed since the last call. */
  newAcks(): number[] {
    const console = this.running.console();
    const end = console.lastIndexOf('\n') + 1;
    const fresh = console.slice(this.scanned, end);
    this.scanned = Math.max(this.scanned, end);
    return [...fresh.matchAll(/VTPM-ACK (\d+)/g)].map((m) => Number(m[1]));
  }

  get console(): string {
    return this.running.console();
  }

  kill(signal: NodeJS.Signals): void {
    this.running.kill(signal);
  }

  /** Resolves once QEMU is gone (its report rejects when the guest did not power off by itself). */
  async exited(): Promise<void> {
    await this.running.report.catch(() => undefined);
  }
}
