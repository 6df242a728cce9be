/**
 * Instant provisioning: the service keeps TPMs manufactured ahead of demand;
 * creating a vTPM takes one (its EK certificate names the pool entry), the
 * pool refills in the background, a guest boots on a pooled TPM, and an empty
 * pool falls back to manufacturing inline (the certificate names the VM).
 */
import assert from 'node:assert/strict';
import { X509Certificate, randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { bootGuest, buildInitramfs, findKernel, resetCountOf, responseCode } from './support/guest.js';
import { ekModulus, serviceForFile, ServiceUnderTest, temporaryDir, type StartedJson } from './support/service.js';

const POOL_SIZE = 2;
let kernel: string;
let initramfs: string;
const context = serviceForFile(
  'vtpm-pool',
  async ({ workDir }) => {
    kernel = await findKernel();
    initramfs = await buildInitramfs(workDir);
  },
  ['--pool-size', String(POOL_SIZE)],
);

interface PoolJson {
  size: number;
  refill_pause_ms: number;
  ready: Record<string, number>;
}

async function waitForPool(service: ServiceUnderTest, version: string, ready: number): Promise<void> {
  const until = Date.now() + 120_000;
  let seen: PoolJson | undefined;
  while (Date.now() < until) {
    seen = await service.json<PoolJson>('pool');
    if (seen.ready[version] === ready) return;
    await delay(200);
  }
  assert.fail(`the pool did not reach ${ready} ready TPM ${version}: ${JSON.stringify(seen)}`);
}

async function certificateSubject(service: ServiceUnderTest, vm: string): Promise<string> {
  const { certificates } = await service.json<{ certificates: Array<{ pem: string }> }>(
    'ek',
    vm,
    '--key-type',
    'rsa2048',
  );
  return new X509Certificate(certificates[0]!.pem).subject;
}

describe('the provisioning pool', () => {
  it('fills, hands out a manufactured TPM, refills, and the guest boots on it', async () => {
    const { service } = context;
    await waitForPool(service, '2.0', POOL_SIZE);
    await waitForPool(service, '1.2', POOL_SIZE);
    assert.equal((await service.json<PoolJson>('pool')).size, POOL_SIZE);

    const vm = randomUUID();
    await service.json('create', '--vm', vm, '--version', '2.0', '--model', 'tpm-crb');
    assert.ok(!(await certificateSubject(service, vm)).includes(vm), 'a pooled TPM was certified before it had a VM');
    assert.equal((await service.json<Array<{ reason: string }>>('history', vm)).length, 1);
    await waitForPool(service, '2.0', POOL_SIZE);

    const first = await bootGuest({
      kernel,
      initramfs,
      qemuArgs: (await service.json<StartedJson>('start', vm)).qemu_args,
    });
    await service.waitForStatus(vm, 'stopped');
    assert.equal(responseCode(first.responses.ekpublic!), 0);
    assert.ok(first.responses.ekpublic!.includes(await ekModulus(service, vm)));
    const second = await bootGuest({
      kernel,
      initramfs,
      qemuArgs: (await service.json<StartedJson>('start', vm)).qemu_args,
    });
    await service.waitForStatus(vm, 'stopped');
    assert.ok(resetCountOf(second.responses.readclock!) > resetCountOf(first.responses.readclock!));
  });

  it('manufactures inline when the pool is empty, and every vTPM has its own TPM', async () => {
    const { service } = context;
    // TPM 2.0: its EK certificate names what it was made for (TCG's TPM 1.2 EK certificates have no subject).
    await waitForPool(service, '2.0', POOL_SIZE);
    const vms = Array.from({ length: POOL_SIZE + 1 }, () => randomUUID());
    // At once: the pool's background refill takes a second per TPM, far longer than taking them.
    await Promise.all(vms.map((vm) => service.json('create', '--vm', vm, '--version', '2.0')));
    const subjects = await Promise.all(vms.map((vm) => certificateSubject(service, vm)));
    const inline = subjects.filter((subject, i) => subject.includes(vms[i]!)).length;
    assert.ok(inline >= 1, `one vTPM is made after the pool ran out, certified for its VM (${inline} were)`);
    assert.ok(vms.length - inline <= POOL_SIZE, 'more vTPMs came from the pool than it held');
    const moduli = await Promise.all(vms.map((vm) => ekModulus(service, vm)));
    assert.equal(new Set(moduli.map((m) => m.toString('hex'))).size, vms.length, 'two vTPMs share an EK');
  });
});

describe('the refill rate', () => {
  it('pauses after each background manufacture when --pool-refill-pause says so', async () => {
    const dir = await temporaryDir('vtpm-pool-pause');
    const service = await ServiceUnderTest.start(join(dir, 'data'), [
      '--pool-size',
      '2',
      '--pool-refill-pause',
      '3600000',
    ]);
    try {
      await waitForPool(service, '2.0', 1);
      assert.equal((await service.json<PoolJson>('pool')).refill_pause_ms, 3_600_000);
      // Unpaused, the second TPM would be ready about a second after the first.
      await delay(5_000);
      assert.deepEqual((await service.json<PoolJson>('pool')).ready, { '1.2': 0, '2.0': 1 });
    } finally {
      await service.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
