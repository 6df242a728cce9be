/**
 * TPM command throughput through the socket vtpm-manager hands out, against
 * the same swtpm reached directly. The load comes from a real guest: a loop of
 * TPM2_GetRandom on /dev/tpm0, timed by the guest's own clock. The two sides
 * alternate, so that the machine's drift hits both. vtpm-manager puts nothing
 * on the data path (QEMU connects to swtpm's own socket), so the ratio should
 * be 1 within noise; this measures it rather than asserting it.
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { bootGuest, buildInitramfs, findKernel } from '../test/e2e/support/guest.js';
import { serveInProcess, socketAccepts } from './harness.js';
import { summarize, table } from './stats.js';

const COMMANDS = 600;
const ROUNDS = 9;

export async function runThroughputBenchmark(): Promise<{ table: string; results: unknown }> {
  const root = await mkdtemp('/tmp/vtpm-bench-');
  const dataDir = join(root, 'data');
  const { server, api } = await serveInProcess(dataDir, 0);
  try {
    const kernel = await findKernel();
    const initramfs = await buildInitramfs(root);
    const vm = randomUUID();
    await api('POST', '/v1/vtpms', { vm, version: '2.0' });
    const direct = join(root, 'direct');
    await mkdir(direct);
    const product: number[] = [];
    const anchor: number[] = [];
    for (let round = 0; round < ROUNDS; round += 1) {
      process.stderr.write(`round ${round + 1}/${ROUNDS}\n`);
      const started = (await api('POST', `/v1/vtpms/${vm}/start`)) as { qemu_args: string[] };
      product.push((await bootGuest({ kernel, initramfs, loadCommands: COMMANDS, qemuArgs: started.qemu_args })).loadRate!);
      while (((await api('GET', `/v1/vtpms/${vm}`)) as { status: string }).status !== 'stopped') await delay(50);

      const socket = join(direct, 'sock');
      const swtpm = spawn('swtpm', ['socket', '--tpm2', '--tpmstate', `dir=${direct}`, '--ctrl', `type=unixio,path=${socket}`, '--terminate'], { stdio: 'ignore' });
      while (!(await socketAccepts(socket))) await delay(5);
      const args = ['-chardev', `socket,id=chrtpm,path=${socket}`, '-tpmdev', 'emulator,id=tpm0,chardev=chrtpm', '-device', 'tpm-tis,tpmdev=tpm0'];
      anchor.push((await bootGuest({ kernel, initramfs, loadCommands: COMMANDS, qemuArgs: args })).loadRate!);
      swtpm.kill('SIGKILL');
    }
    await api('DELETE', `/v1/vtpms/${vm}`);
    const p = summarize(product);
    const a = summarize(anchor);
    return {
      table: table([
        { path: "vtpm-manager's socket", rounds: p.count, 'commands/s (median)': p.p50.toFixed(0), min: Math.min(...product).toFixed(0), max: p.max.toFixed(0) },
        { path: 'anchor: swtpm started directly', rounds: a.count, 'commands/s (median)': a.p50.toFixed(0), min: Math.min(...anchor).toFixed(0), max: a.max.toFixed(0) },
      ]) + `\nratio (median): ${(p.p50 / a.p50).toFixed(3)}`,
      results: { commands_per_round: COMMANDS, product_commands_per_s: product, anchor_commands_per_s: anchor, ratio: p.p50 / a.p50 },
    };
  } finally {
    await server.close();
    await rm(root, { recursive: true, force: true });
  }
}
