/**
 * Nothing under the data directory holds a TPM's state or its EK certificate
 * in plaintext. The needle is the EK's RSA modulus: a plaintext TPM state
 * contains it (the EK is a persistent object), and so does the certificate.
 * A control run proves the scan finds it in an unencrypted state.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID, X509Certificate } from 'node:crypto';
import { lstat, mkdir, readFile, readdir } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { bootGuest, buildInitramfs, findKernel } from './support/guest.js';
import { serviceForFile, type StartedJson } from './support/service.js';

// Nothing shared with a QEMU group here (libvirt's, when installed, is found by default): owner-only throughout.
const context = serviceForFile('vtpm-rest', undefined, ['--pool-size', '0', '--qemu-group', 'root']);

async function* regularFiles(dir: string): AsyncGenerator<string> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* regularFiles(path);
    else if (entry.isFile()) yield path;
  }
}

/** Every file under `dir` that contains any of the needles. */
async function filesContaining(dir: string, needles: Buffer[]): Promise<string[]> {
  const hits: string[] = [];
  for await (const path of regularFiles(dir)) {
    const content = await readFile(path);
    if (needles.some((needle) => content.includes(needle))) hits.push(path);
  }
  return hits;
}

function needlesOf(pem: string): Buffer[] {
  const certificate = new X509Certificate(pem);
  const modulus = Buffer.from(certificate.publicKey.export({ format: 'jwk' }).n!, 'base64url');
  const base64Lines = pem.split('\n').filter((line) => /^[A-Za-z0-9+/]{64}$/.test(line));
  return [
    modulus.subarray(0, 32),
    modulus.subarray(-32),
    certificate.raw.subarray(0, 64),
    ...base64Lines.slice(2, 4).map((l) => Buffer.from(l)),
  ];
}

/** The RSA EK modulus as a plain swtpm (no encryption) reports it over its TCP data channel. */
async function plaintextEkModulus(stateDir: string): Promise<Buffer> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const swtpm = spawn(
    'swtpm',
    [
      'socket',
      '--tpm2',
      '--tpmstate',
      `dir=${stateDir}`,
      '--server',
      `type=tcp,port=${port}`,
      '--ctrl',
      `type=tcp,port=${port + 1}`,
      '--flags',
      'not-need-init,startup-clear',
    ],
    { stdio: 'ignore' },
  );
  try {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await new Promise<Buffer>((resolve, reject) => {
          const socket = connect(port, '127.0.0.1');
          let response = Buffer.alloc(0);
          socket.on('connect', () => socket.write(Buffer.from('80010000000e0000017381010001', 'hex')));
          socket.on('data', (chunk) => {
            response = Buffer.concat([response, chunk]);
            if (response.length >= 6 && response.length >= response.readUInt32BE(2)) {
              socket.end();
              // Header (10), TPM2B size (2), type, nameAlg, attributes (8), 32-byte policy (34),
              // RSA parameters (14): the unique field's size sits at 68 and the modulus follows.
              if (response.readUInt32BE(6) !== 0 || response.readUInt16BE(68) !== 256)
                reject(new Error(`unexpected ReadPublic response ${response.toString('hex')}`));
              resolve(response.subarray(70, 70 + 256));
            }
          });
          socket.on('error', reject);
        });
      } catch (error) {
        if (attempt > 50) throw error;
        await delay(100);
      }
    }
  } finally {
    swtpm.kill('SIGKILL');
  }
}

describe('encryption at rest', () => {
  it('the scan finds an EK modulus in an unencrypted TPM state (control)', async () => {
    const stateDir = join(context.workDir, 'plaintext-state');
    await mkdir(stateDir);
    await new Promise<void>((resolve, reject) => {
      const setup = spawn('swtpm_setup', ['--tpm2', '--tpm-state', stateDir, '--createek', '--overwrite'], {
        stdio: 'ignore',
      });
      setup.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`swtpm_setup exited ${code}`))));
    });
    const modulus = await plaintextEkModulus(stateDir);
    assert.equal(modulus.length, 256);
    assert.deepEqual(await filesContaining(stateDir, [modulus.subarray(0, 32)]), [join(stateDir, 'tpm2-00.permall')]);
  });

  it('no file under the data directory holds a TPM state or an EK certificate in plaintext', async () => {
    const kernel = await findKernel();
    const initramfs = await buildInitramfs(context.workDir);
    const needles: Buffer[] = [];
    for (const version of ['2.0', '1.2']) {
      const vm = randomUUID();
      await context.service.json('create', '--vm', vm, '--version', version);
      const { certificates } = await context.service.json<{ certificates: Array<{ pem: string }> }>(
        'ek',
        vm,
        '--key-type',
        'rsa2048',
      );
      needles.push(...needlesOf(certificates[0]!.pem));
      // Let swtpm write the state while a guest runs, not only swtpm_setup.
      await bootGuest({
        kernel,
        initramfs,
        qemuArgs: (await context.service.json<StartedJson>('start', vm)).qemu_args,
      });
      await context.service.waitForStatus(vm, 'stopped');
    }
    assert.deepEqual(await filesContaining(context.service.dataDir, needles), []);
  });

  it('state, keys and the admin token are readable by the owner only', async () => {
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '2.0', '--firmware', 'uefi');
    // The host's working copies exist while the vTPM runs.
    await context.service.json('start', vm);
    const mode = async (path: string) => (await lstat(path)).mode & 0o777;
    // Others may pass through (swtpm runs as tss and reaches its own directories), never list or read.
    assert.equal(await mode(context.service.dataDir), 0o711);
    for (const dir of ['keys', 'ca', 'log', 'nvram'])
      assert.equal(await mode(join(context.service.dataDir, dir)), 0o700, dir);
    assert.equal(await mode(join(context.service.dataDir, 'admin.token')), 0o600);
    assert.equal(await mode(join(context.service.dataDir, 'keys', 'master.key')), 0o600);
    // SQLite gives the WAL and shared-memory files the database's mode; they hold rows before a checkpoint.
    for (const file of ['vtpm.sqlite', 'vtpm.sqlite-wal', 'vtpm.sqlite-shm'])
      assert.equal(await mode(join(context.service.dataDir, file)), 0o600, `${file} is not 0600`);
    assert.equal(await mode(join(context.service.dataDir, 'tpm', vm)), 0o700);
    for (const file of await readdir(join(context.service.dataDir, 'tpm', vm))) {
      assert.equal(await mode(join(context.service.dataDir, 'tpm', vm, file)), 0o600, `${file} is not 0600`);
    }
    assert.equal(await mode(join(context.service.dataDir, 'nvram', `${vm}.fd`)), 0o600);
    for (const file of await readdir(join(context.service.dataDir, 'keys', 'secrets'))) {
      assert.equal(await mode(join(context.service.dataDir, 'keys', 'secrets', file)), 0o600);
    }
    await context.service.json('stop', vm);
  });
});
