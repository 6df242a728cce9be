import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { InvalidArgumentError } from '../errors.js';
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';
import { adoptState } from './adopt.js';
import { handOver, KEY_FD, runProgram } from './run-program.js';
import { EK_CERTIFICATE_INDICES, readNvIndex, responseCode, tpm2 } from './tpm2-commands.js';
import { connectTpm, socketAccepts } from './tpm-socket.js';

const SPEC: TpmSpec = { version: '2.0', model: 'tpm-tis' };
const NV_INDEX = 0x0150_0042;
const WRITTEN = Buffer.from('adopted!');

/** Runs swtpm on `stateDir` with a data socket, hands `work` a command sender, then shuts it down. */
async function withTpm<T>(
  stateDir: string,
  key: string[],
  keyMaterial: string | Buffer,
  work: (send: (c: Buffer) => Promise<Buffer>) => Promise<T>,
): Promise<T> {
  const data = join(stateDir, '..', `data-${randomBytes(4).toString('hex')}`);
  const child = spawn(
    'swtpm',
    [
      'socket',
      '--tpm2',
      '--tpmstate',
      `dir=${stateDir}`,
      '--server',
      `type=unixio,path=${data}`,
      '--flags',
      'not-need-init,startup-clear',
      ...key,
    ],
    { stdio: ['ignore', 'ignore', 'inherit', 'pipe'] },
  );
  handOver(child, KEY_FD, keyMaterial);
  while (!(await socketAccepts(data))) await delay(5);
  const tpm = await connectTpm(data);
  try {
    return await work(tpm.send);
  } finally {
    tpm.close();
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
  }
}

describe("adopting a TPM state written by libvirt's swtpm", () => {
  let root: string;
  let sourceDir: string;
  const passphrase = Buffer.from('libvirt-secret-value');
  let ekBefore: Buffer | undefined;

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'vtpm-adopt-test-'));
    sourceDir = join(root, 'source');
    await mkdir(sourceDir);
    const passFile = join(root, 'pass');
    await writeFile(passFile, passphrase);
    // What libvirt runs for <backend type='emulator' version='2.0'><encryption .../>:
    // swtpm_setup with a local CA and a passphrase.
    // The CA is the test's own: the host's (/var/lib/swtpm-localca)
    // belongs to the tss user libvirt runs swtpm_setup as.
    const caDir = join(root, 'localca');
    await mkdir(caDir);
    await writeFile(
      join(root, 'swtpm-localca.conf'),
      ['statedir', 'signingkey signkey.pem', 'issuercert issuercert.pem', 'certserial certserial']
        .map((entry) => {
          const [key, file] = entry.split(' ');
          return `${key} = ${file ? join(caDir, file) : caDir}`;
        })
        .join('\n') + '\n',
    );
    await writeFile(
      join(root, 'swtpm_setup.conf'),
      'create_certs_tool = /usr/bin/swtpm_localca\n' +
        `create_certs_tool_config = ${join(root, 'swtpm-localca.conf')}\n` +
        'create_certs_tool_options = /etc/swtpm-localca.options\n',
    );
    await runProgram(
      'swtpm_setup',
      [
        '--tpm2',
        '--tpmstate',
        sourceDir,
        '--config',
        join(root, 'swtpm_setup.conf'),
        '--create-ek-cert',
        '--create-platform-cert',
        '--lock-nvram',
        '--pwdfile',
        passFile,
        '--cipher',
        'aes-256-cbc',
        '--vmid',
        'adopt-test',
        '--overwrite',
      ],
      { timeoutMs: 120_000 },
    );
    await withTpm(sourceDir, ['--key', 'pwdfd=3,mode=aes-256-cbc'], passphrase, async (send) => {
      assert.equal(responseCode(await send(tpm2.nvDefineSpace(NV_INDEX, WRITTEN.length))), 0);
      assert.equal(responseCode(await send(tpm2.nvWrite(NV_INDEX, WRITTEN))), 0);
      ekBefore = await readNvIndex(send, EK_CERTIFICATE_INDICES.rsa2048!);
    });
    assert.ok(ekBefore && ekBefore.length > 500, 'the source TPM has an RSA EK certificate');
  });

  after(async () => rm(root, { recursive: true, force: true }));

  it('re-encrypts the state under the new key, keeping the EK certificate and NV contents', async () => {
    const stateKey = randomBytes(32);
    const adopted = await adoptState({
      spec: SPEC,
      state: await readFile(join(sourceDir, 'tpm2-00.permall')),
      sourcePassphrase: passphrase,
      stateKey,
      scratchRoot: root,
    });

    const rsa = adopted.ekCertificates.find((c) => c.keyType === 'rsa2048');
    assert.deepEqual(rsa?.der, ekBefore);
    assert.ok(
      adopted.ekCertificates.some((c) => c.keyType.startsWith('secp')),
      'the ECC EK certificate is found too',
    );
    assert.equal(adopted.state.includes(ekBefore!.subarray(0, 64)), false, 'the adopted state is encrypted');

    const adoptedDir = join(root, 'adopted');
    await mkdir(adoptedDir);
    await writeFile(join(adoptedDir, 'tpm2-00.permall'), adopted.state);
    await withTpm(adoptedDir, ['--key', 'fd=3,mode=aes-256-cbc,format=hex'], stateKey.toString('hex'), async (send) => {
      assert.deepEqual(await readNvIndex(send, NV_INDEX), WRITTEN);
      assert.deepEqual(await readNvIndex(send, EK_CERTIFICATE_INDICES.rsa2048!), ekBefore);
    });
  });

  it('adopts a state libvirt left unencrypted (no secret)', async () => {
    const plainDir = join(root, 'plain');
    await mkdir(plainDir);
    await runProgram('swtpm_setup', ['--tpm2', '--tpmstate', plainDir, '--createek', '--overwrite'], {
      timeoutMs: 120_000,
    });
    await withTpm(plainDir, [], '', async (send) => {
      assert.equal(responseCode(await send(tpm2.nvDefineSpace(NV_INDEX, WRITTEN.length))), 0);
      assert.equal(responseCode(await send(tpm2.nvWrite(NV_INDEX, WRITTEN))), 0);
    });
    const stateKey = randomBytes(32);
    const adopted = await adoptState({
      spec: SPEC,
      state: await readFile(join(plainDir, 'tpm2-00.permall')),
      stateKey,
      scratchRoot: root,
    });
    assert.deepEqual(adopted.ekCertificates, [], 'no certificates were made, none are invented');
    const adoptedDir = join(root, 'adopted-plain');
    await mkdir(adoptedDir);
    await writeFile(join(adoptedDir, 'tpm2-00.permall'), adopted.state);
    await withTpm(adoptedDir, ['--key', 'fd=3,mode=aes-256-cbc,format=hex'], stateKey.toString('hex'), async (send) => {
      assert.deepEqual(await readNvIndex(send, NV_INDEX), WRITTEN);
    });
  });

  it('refuses a wrong secret without producing anything', async () => {
    await assert.rejects(
      adoptState({
        spec: SPEC,
        state: await readFile(join(sourceDir, 'tpm2-00.permall')),
        sourcePassphrase: Buffer.from('wrong'),
        stateKey: randomBytes(32),
        scratchRoot: root,
      }),
      (error: unknown) =>
        error instanceof InvalidArgumentError && /^state: .*opens with the given secret/.test(error.message),
    );
  });

  it("refuses what is no swtpm state at all as the caller's bad input (a 4xx), for either version", async () => {
    for (const version of ['1.2', '2.0'] as const) {
      await assert.rejects(
        adoptState({
          spec: { version, model: 'tpm-tis' },
          state: randomBytes(3000),
          stateKey: randomBytes(32),
          scratchRoot: root,
        }),
        (error: unknown) => error instanceof InvalidArgumentError && error.status === 400,
        version,
      );
    }
  });

  it('refuses an encrypted state when no secret is given', async () => {
    await assert.rejects(
      adoptState({
        spec: SPEC,
        state: await readFile(join(sourceDir, 'tpm2-00.permall')),
        stateKey: randomBytes(32),
        scratchRoot: root,
      }),
      (error: unknown) => error instanceof InvalidArgumentError && /encrypted one needs its secret/.test(error.message),
    );
  });
});
