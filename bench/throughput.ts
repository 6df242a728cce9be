/**
 * TPM command throughput through the socket vtpm-manager hands out, against a
 * swtpm with the same options started directly. The load client reaches swtpm
 * exactly as QEMU does (control socket, data channel passed as a descriptor)
 * and sends TPM2_GetRandom one command at a time, as a guest's TPM driver
 * does, in blocks of 1,000 that alternate between the two paths so that the
 * machine's drift hits both. vtpm-manager puts nothing on the data path, so the ratio should
 * be 1 within noise; this measures it rather than asserting it.
 */
import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { benchRoot, serveInProcess, startSwtpmDirectly, untilStopped } from './harness.js';
import { summarize, table } from './stats.js';
import { responseCode, tpm2 } from '../src/swtpm/tpm2-commands.js';
import { TpmChannel } from './tpm-load-client.js';

const BLOCK = 1_000;
const BLOCKS_PER_ROUND = 20;
const WARM_UP = 200;
const ROUNDS = 3;

/** Commands per second over one block, one outstanding command at a time. */
async function blockRate(channel: TpmChannel): Promise<number> {
  const started = performance.now();
  for (let i = 0; i < BLOCK; i += 1) {
    const response = await channel.send(tpm2.getRandom16);
    if (responseCode(response) !== 0)
      throw new Error(`TPM2_GetRandom answered 0x${responseCode(response).toString(16)}`);
  }
  return BLOCK / ((performance.now() - started) / 1000);
}

export async function runThroughputBenchmark(): Promise<{ table: string; results: unknown }> {
  const root = await benchRoot();
  const { server, api } = await serveInProcess(join(root, 'data'), 0);
  try {
    const vm = randomUUID();
    await api('POST', '/v1/vtpms', { vm, version: '2.0' });
    const product: number[] = [];
    const anchor: number[] = [];
    for (let round = 0; round < ROUNDS; round += 1) {
      process.stderr.write(`round ${round + 1}/${ROUNDS}\n`);
      const started = (await api('POST', `/v1/vtpms/${vm}/start`)) as { socket: string };
      const direct = await startSwtpmDirectly(join(root, `direct-${round}`));
      const channels = { product: await TpmChannel.open(started.socket), anchor: await TpmChannel.open(direct.socket) };
      try {
        for (let i = 0; i < WARM_UP; i += 1)
          await Promise.all([channels.product.send(tpm2.getRandom16), channels.anchor.send(tpm2.getRandom16)]);
        // Blocks alternate between the two paths, so that drift in the machine's load hits both alike.
        for (let block = 0; block < BLOCKS_PER_ROUND; block += 1) {
          product.push(await blockRate(channels.product));
          anchor.push(await blockRate(channels.anchor));
        }
      } finally {
        channels.product.close();
        channels.anchor.close();
        direct.kill();
      }
      await untilStopped(api, vm);
    }
    await api('DELETE', `/v1/vtpms/${vm}`);
    const p = summarize(product);
    const a = summarize(anchor);
    return {
      table:
        table([
          {
            path: "vtpm-manager's socket",
            blocks: p.count,
            'commands/s (median)': p.p50.toFixed(0),
            min: Math.min(...product).toFixed(0),
            max: p.max.toFixed(0),
          },
          {
            path: 'anchor: swtpm started directly',
            blocks: a.count,
            'commands/s (median)': a.p50.toFixed(0),
            min: Math.min(...anchor).toFixed(0),
            max: a.max.toFixed(0),
          },
        ]) + `\nratio (median): ${(p.p50 / a.p50).toFixed(3)}`,
      results: {
        commands_per_block: BLOCK,
        product_commands_per_s: product,
        anchor_commands_per_s: anchor,
        ratio: p.p50 / a.p50,
      },
    };
  } finally {
    await server.close();
    await rm(root, { recursive: true, force: true });
  }
}
