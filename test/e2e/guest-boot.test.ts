/**
 * A real guest boots on the qemu_args the product returns and sees /dev/tpm0
 * of the requested version; its TPM is the one the product manufactured (the
 * EK the guest reads is the key the EK certificate certifies); a second boot,
 * and a boot after `vtpm serve` restarted, see the state the first boot left.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  bootGuest,
  buildInitramfs,
  findKernel,
  resetCountOf,
  responseCode,
  type GuestReport,
} from './support/guest.js';
import { ekModulus, serviceForFile, type StartedJson, type VtpmJson } from './support/service.js';

let kernel: string;
let initramfs: string;
const context = serviceForFile('vtpm-boot', async ({ workDir }) => {
  kernel = await findKernel();
  initramfs = await buildInitramfs(workDir);
});

async function bootOnce(vm: string): Promise<GuestReport> {
  const started = await context.service.json<StartedJson>('start', vm);
  assert.equal(started.status, 'running');
  const report = await bootGuest({ kernel, initramfs, qemuArgs: started.qemu_args });
  // QEMU is gone, so swtpm is gone: the vTPM must be back to stopped, with its state kept.
  await context.service.waitForStatus(vm, 'stopped');
  return report;
}

function assertSeesTpm(report: GuestReport, version: '1.2' | '2.0'): void {
  assert.ok(report.devices.includes('/dev/tpm0'), `guest saw no /dev/tpm0:\n${report.console.slice(-2000)}`);
  assert.equal(report.version, version === '2.0' ? '2' : '1');
}

function assertGuestEkIs(report: GuestReport, modulus: Buffer): void {
  const response = report.responses.ekpublic;
  assert.ok(response, 'the guest sent no EK read');
  assert.equal(
    responseCode(response),
    0,
    `EK read failed with TPM response code 0x${responseCode(response).toString(16)}`,
  );
  assert.ok(response.includes(modulus), 'the EK the guest reads is not the key its EK certificate certifies');
}

const variants = [
  { version: '2.0', model: 'tpm-tis', how: ['--version', '2.0'] },
  { version: '2.0', model: 'tpm-crb', how: ['--flavor', 'hw:tpm_version=2.0', '--image', 'hw_tpm_model=tpm-crb'] },
  { version: '1.2', model: 'tpm-tis', how: ['--image', 'hw_tpm_version=1.2'] },
] as const;

describe('a real guest on a vTPM', () => {
  for (const variant of variants) {
    it(
      `TPM ${variant.version} ${variant.model}: ` +
        'the guest sees the manufactured TPM, and its state persists across boots',
      async () => {
        const vm = randomUUID();
        const created = await context.service.json<VtpmJson>('create', '--vm', vm, ...variant.how);
        assert.deepEqual([created.version, created.model, created.status], [variant.version, variant.model, 'stopped']);
        const modulus = await ekModulus(context.service, vm);

        const first = await bootOnce(vm);
        assertSeesTpm(first, variant.version);
        assertGuestEkIs(first, modulus);

        const second = await bootOnce(vm);
        assertSeesTpm(second, variant.version);
        assertGuestEkIs(second, modulus);
        if (variant.version === '2.0') {
          assert.ok(
            resetCountOf(second.responses.readclock!) > resetCountOf(first.responses.readclock!),
            "resetCount did not grow: the second boot did not start from the first boot's state",
          );
        }
      },
    );
  }

  it('after `vtpm serve` restarts, the vTPM is still there and boots with the same state', async () => {
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '2.0', '--model', 'tpm-crb');
    const modulus = await ekModulus(context.service, vm);
    const beforeRestart = await bootOnce(vm);

    await context.restart();

    const shown = await context.service.json<VtpmJson>('show', vm);
    assert.deepEqual([shown.status, shown.version, shown.model], ['stopped', '2.0', 'tpm-crb']);
    assert.ok((await ekModulus(context.service, vm)).equals(modulus));
    const afterRestart = await bootOnce(vm);
    assertGuestEkIs(afterRestart, modulus);
    assert.ok(resetCountOf(afterRestart.responses.readclock!) > resetCountOf(beforeRestart.responses.readclock!));
  });
});
