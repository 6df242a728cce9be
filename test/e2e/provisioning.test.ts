/**
 * Instant provisioning: the service keeps TPMs manufactured ahead of demand;
 * creating a vTPM takes one and has its EK certificates issued for the VM by
 * the deployment's CA (named after the deployment), into the TPM where the
 * guest reads them; the pool refills in the background, a guest boots on a
 * pooled TPM, and an empty pool falls back to manufacturing inline.
 */
import assert from 'node:assert/strict';
import { X509Certificate, randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { verifyAgainstAuthority } from '../../src/swtpm/testing/certificate-chain.js';
import { bootGuest, buildInitramfs, findKernel, resetCountOf, responseCode } from './support/guest.js';
import {
  bootNvGuest,
  ekModulus,
  serviceForFile,
  ServiceUnderTest,
  temporaryDir,
  type StartedJson,
} from './support/service.js';

const POOL_SIZE = 2;
const DEPLOYMENT = 'E2E Pool Deployment';
let kernel: string;
let initramfs: string;
const context = serviceForFile(
  'vtpm-pool',
  async ({ workDir }) => {
    kernel = await findKernel();
    initramfs = await buildInitramfs(workDir);
  },
  ['--pool-size', String(POOL_SIZE), '--ca-name', DEPLOYMENT],
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

interface EkJson {
  key_type: string;
  pem: string;
  subject: string;
  issuer: string;
}

async function ekCertificatesOf(service: ServiceUnderTest, vm: string): Promise<EkJson[]> {
  return (await service.json<{ certificates: EkJson[] }>('ek', vm)).certificates;
}

/**
 * Every EK certificate of the vTPM, as the API gives it, names `subject` and chains to the deployment's CA; an
 * empty subject is a TPM 1.2's, signed with SHA-1 as TCG's 1.2 profile has it.
 */
async function assertCertifiedFor(service: ServiceUnderTest, vm: string, subject: string): Promise<EkJson[]> {
  const certificates = await ekCertificatesOf(service, vm);
  assert.ok(certificates.length > 0);
  for (const certificate of certificates) {
    const parsed = new X509Certificate(certificate.pem);
    // Node has an empty subject (TPM 1.2's) as undefined.
    assert.equal(parsed.subject ?? '', subject, `${certificate.key_type} of ${vm}`);
    assert.equal(certificate.subject, subject, 'the API shows whom it names');
    assert.equal(parsed.issuer, `CN=${DEPLOYMENT} TPM CA`);
    assert.equal(certificate.issuer, `CN=${DEPLOYMENT} TPM CA`, "the API shows the deployment's CA");
    await verifyAgainstAuthority(certificate.pem, join(service.dataDir, 'ca'), subject === '');
  }
  return certificates;
}

/** The data of a TPM2_NV_Read response the guest printed: after the header, parameterSize and the size. */
const nvReadData = (response: Buffer) => response.subarray(16, 16 + response.readUInt16BE(14));

describe('the provisioning pool', () => {
  it('fills, hands out a manufactured TPM, refills, and the guest boots on it', async () => {
    const { service } = context;
    await waitForPool(service, '2.0', POOL_SIZE);
    await waitForPool(service, '1.2', POOL_SIZE);
    assert.equal((await service.json<PoolJson>('pool')).size, POOL_SIZE);

    const vm = randomUUID();
    await service.json('create', '--vm', vm, '--version', '2.0', '--model', 'tpm-crb');
    const certificates = await assertCertifiedFor(service, vm, `CN=${vm}`);
    assert.deepEqual(certificates.map((c) => c.key_type).sort(), ['rsa2048', 'secp384r1']);
    const text = await service.cli('ek', vm, '--key-type', 'rsa2048');
    assert.match(text.stdout, new RegExp(`^rsa2048: subject CN=${vm}, issued by CN=${DEPLOYMENT} TPM CA\n-----BEGIN`));
    assert.equal((await service.json<Array<{ reason: string }>>('history', vm)).length, 1);
    await waitForPool(service, '2.0', POOL_SIZE);

    // What the guest reads from the TPM's NV memory is the certificate issued for its VM.
    const nv = await bootNvGuest(service, vm, { kernel, initramfs });
    const rsa = new X509Certificate(certificates.find((c) => c.key_type === 'rsa2048')!.pem).raw;
    const read = Buffer.concat([nvReadData(nv.responses['5-ekcert-0']!), nvReadData(nv.responses['6-ekcert-512']!)]);
    assert.ok(read.equals(rsa.subarray(0, read.length)), 'the guest reads the certificate the API gives');
    assert.ok(read.includes(Buffer.from(vm)), "the guest's certificate names its VM");

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

  it('hands out a pooled TPM 1.2 certified by the deployment CA, with the empty subject TCG prescribes', async () => {
    const { service } = context;
    await waitForPool(service, '1.2', POOL_SIZE);
    const vm = randomUUID();
    await service.json('create', '--vm', vm, '--version', '1.2');
    await assertCertifiedFor(service, vm, '');
    await waitForPool(service, '1.2', POOL_SIZE);
  });

  it('manufactures inline when the pool is empty; every vTPM has its own TPM, certified for its VM', async () => {
    const { service } = context;
    await waitForPool(service, '2.0', POOL_SIZE);
    const vms = Array.from({ length: POOL_SIZE + 1 }, () => randomUUID());
    // At once: the pool's background refill takes a second per TPM, far longer than taking them.
    await Promise.all(vms.map((vm) => service.json('create', '--vm', vm, '--version', '2.0')));
    for (const vm of vms) await assertCertifiedFor(service, vm, `CN=${vm}`);
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
