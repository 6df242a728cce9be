/**
 * Provisioning latency: from the API call that creates a TPM 2.0 vTPM to the
 * vTPM being ready to start, one create after the other:
 * - within the pool: as many creates as a full pool holds;
 * - a burst of three times the pool: the pool full at first, then creates
 *   beyond it, which manufacture inline while the pool refills beside them;
 * - with the pool off (manufacturing inline).
 *
 * Anchor, same run: bare `swtpm_setup` with the same options (TPM 2.0, RSA and
 * ECC EKs, EK and platform certificates from a local CA, encrypted state),
 * which is what libvirt runs when a VM with a new TPM first starts.
 */
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { type Api, benchRoot, serveInProcess } from './harness.js';
import { summarize, table } from './stats.js';

const POOL_SIZE = 20;
const BURST_CREATES = 3 * POOL_SIZE;
const INLINE_CREATES = 10;
const ANCHOR_RUNS = 10;

async function timeCreates(api: Api, count: number): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < count; i += 1) {
    const started = performance.now();
    await api('POST', '/v1/vtpms', { vm: randomUUID(), version: '2.0' });
    samples.push(performance.now() - started);
  }
  return samples;
}

function run(program: string, args: string[], keyHex: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    (child.stdio[3] as NodeJS.WritableStream).end(keyHex);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${program} exited ${code}: ${stderr}`))));
  });
}

async function bareSwtpmSetup(root: string): Promise<number[]> {
  const dir = join(root, 'anchor');
  await mkdir(join(dir, 'ca'), { recursive: true });
  await writeFile(
    join(dir, 'localca.conf'),
    `statedir = ${dir}/ca\nsigningkey = ${dir}/ca/signkey.pem\n` +
      `issuercert = ${dir}/ca/issuercert.pem\ncertserial = ${dir}/ca/certserial\n`,
  );
  await writeFile(
    join(dir, 'localca.options'),
    '--platform-manufacturer bench\n--platform-version 1.0\n--platform-model QEMU\n',
  );
  await writeFile(
    join(dir, 'setup.conf'),
    'create_certs_tool = /usr/bin/swtpm_localca\n' +
      `create_certs_tool_config = ${dir}/localca.conf\n` +
      `create_certs_tool_options = ${dir}/localca.options\n` +
      'active_pcr_banks = sha256\n',
  );
  const samples: number[] = [];
  for (let i = 0; i <= ANCHOR_RUNS; i += 1) {
    const state = join(dir, `state-${i}`);
    await mkdir(state);
    const started = performance.now();
    await run(
      'swtpm_setup',
      [
        '--tpm2',
        '--create-platform-cert',
        '--tpm-state',
        state,
        '--config',
        join(dir, 'setup.conf'),
        '--createek',
        '--create-ek-cert',
        '--write-ek-cert-files',
        state,
        '--keyfile-fd',
        '3',
        '--cipher',
        'aes-256-cbc',
        '--vmid',
        randomUUID(),
        '--overwrite',
      ],
      randomBytes(32).toString('hex'),
    );
    // The first run also creates the CA: leave it out, as the product's first manufacture is left out.
    if (i > 0) samples.push(performance.now() - started);
  }
  return samples;
}

async function waitForPool(api: Api, ready: number): Promise<void> {
  for (;;) {
    const pool = (await api('GET', '/v1/pool')) as { ready: Record<string, number> };
    if ((pool.ready['2.0'] ?? 0) >= ready) return;
    await delay(500);
  }
}

export async function runProvisionBenchmark(): Promise<{ table: string; results: unknown }> {
  const root = await benchRoot();
  try {
    const anchorSamples = await bareSwtpmSetup(root);
    const anchor = summarize(anchorSamples);

    const inline = await serveInProcess(join(root, 'inline'), 0);
    await inline.api('POST', '/v1/vtpms', { vm: randomUUID(), version: '2.0' });
    const inlineLatency = await timeCreates(inline.api, INLINE_CREATES);
    await inline.server.close();

    process.stderr.write(`filling a pool of ${POOL_SIZE} TPM 2.0...\n`);
    const pooled = await serveInProcess(join(root, 'pooled'), POOL_SIZE);
    await waitForPool(pooled.api, POOL_SIZE);
    const withinPool = await timeCreates(pooled.api, POOL_SIZE);
    process.stderr.write(`refilling, then a burst of ${BURST_CREATES}...\n`);
    await waitForPool(pooled.api, POOL_SIZE);
    const burst = await timeCreates(pooled.api, BURST_CREATES);
    await pooled.server.close();

    const ms = (v: number) => v.toFixed(1);
    const row = (what: string, samples: number[]) => {
      const s = summarize(samples);
      return {
        what,
        runs: s.count,
        'p50 ms': ms(s.p50),
        'max ms': ms(s.max),
        'p50 / anchor p50': (s.p50 / anchor.p50).toFixed(3),
        'max / anchor max': (s.max / anchor.max).toFixed(3),
      };
    };
    return {
      table: table([
        row(`vtpm create, within the pool (${POOL_SIZE} creates, pool of ${POOL_SIZE})`, withinPool),
        row(`vtpm create, burst of ${BURST_CREATES} on a full pool of ${POOL_SIZE}: all`, burst),
        row(`  the burst's first ${POOL_SIZE}`, burst.slice(0, POOL_SIZE)),
        row(`  the burst beyond the pool (${BURST_CREATES - POOL_SIZE}, pool refilling)`, burst.slice(POOL_SIZE)),
        row('vtpm create, pool off (inline)', inlineLatency),
        row('anchor: swtpm_setup directly, as the product runs it', anchorSamples),
      ]),
      results: {
        within_pool_ms: withinPool,
        burst_ms: burst,
        inline_ms: inlineLatency,
        anchor_swtpm_setup_ms: anchorSamples,
      },
    };
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}
