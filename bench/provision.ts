/**
 * Provisioning latency: from the API call that creates a TPM 2.0 vTPM to the
 * vTPM being ready to start, while the provisioning pool is not empty, and
 * with the pool off (manufacturing inline).
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
import { p99OrMax, summarize, table, type Summary } from './stats.js';

const POOLED_CREATES = 40;
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
    const anchor = summarize(await bareSwtpmSetup(root));

    const inline = await serveInProcess(join(root, 'inline'), 0);
    await inline.api('POST', '/v1/vtpms', { vm: randomUUID(), version: '2.0' });
    const inlineLatency = summarize(await timeCreates(inline.api, INLINE_CREATES));
    await inline.server.close();

    process.stderr.write(`filling a pool of ${POOLED_CREATES} TPM 2.0...\n`);
    const pooled = await serveInProcess(join(root, 'pooled'), POOLED_CREATES);
    await waitForPool(pooled.api, POOLED_CREATES);
    const pooledLatency = summarize(await timeCreates(pooled.api, POOLED_CREATES));
    await pooled.server.close();

    const row = (what: string, s: Summary) => ({
      what,
      runs: s.count,
      'p50 ms': s.p50.toFixed(1),
      'p99 ms': p99OrMax(s),
      'max ms': s.max.toFixed(1),
      'p50 speed-up vs anchor': (anchor.p50 / s.p50).toFixed(1),
    });
    return {
      table: table([
        row('vtpm create, pool not empty', pooledLatency),
        row('vtpm create, pool off (inline)', inlineLatency),
        row('anchor: bare swtpm_setup', anchor),
      ]),
      results: { pooled_ms: pooledLatency, inline_ms: inlineLatency, anchor_swtpm_setup_ms: anchor },
    };
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}
