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
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import pino from 'pino';
import { startServer } from '../src/control/server.js';
import { bootGuest, buildInitramfs, findKernel } from '../test/e2e/support/guest.js';
import { summarize, table } from './stats.js';

const COMMANDS = 400;
const ROUNDS = 3;

function accepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once('connect', () => (socket.end(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
}

async function call(url: string, token: string, method: string, path: string, body?: unknown): Promise<unknown> {
  const response = await fetch(`${url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
  return response.status === 204 ? undefined : response.json();
}

export async function runThroughputBenchmark(): Promise<{ table: string; results: unknown }> {
  const root = await mkdtemp('/tmp/vtpm-bench-');
  const dataDir = join(root, 'data');
  const server = await startServer({
    dataDir, listen: '127.0.0.1:0', runDir: join(dataDir, 'run'), scratchDir: '/dev/shm', keyManager: 'local', retention: 20, poolSize: 0,
    logger: pino({ level: 'warn' }, pino.destination(2)), version: 'bench',
  });
  const token = (await readFile(server.adminTokenPath, 'utf8')).trim();
  try {
    const kernel = await findKernel();
    const initramfs = await buildInitramfs(root);
    const vm = randomUUID();
    await call(server.url, token, 'POST', '/v1/vtpms', { vm, version: '2.0' });
    const direct = join(root, 'direct');
    await mkdir(direct);
    const product: number[] = [];
    const anchor: number[] = [];
    for (let round = 0; round < ROUNDS; round += 1) {
      process.stderr.write(`round ${round + 1}/${ROUNDS}\n`);
      const started = (await call(server.url, token, 'POST', `/v1/vtpms/${vm}/start`)) as { qemu_args: string[] };
      product.push((await bootGuest({ kernel, initramfs, loadCommands: COMMANDS, qemuArgs: started.qemu_args })).loadRate!);
      while (((await call(server.url, token, 'GET', `/v1/vtpms/${vm}`)) as { status: string }).status !== 'stopped') await delay(50);

      const socket = join(direct, 'sock');
      const swtpm = spawn('swtpm', ['socket', '--tpm2', '--tpmstate', `dir=${direct}`, '--ctrl', `type=unixio,path=${socket}`, '--terminate'], { stdio: 'ignore' });
      while (!(await accepts(socket))) await delay(5);
      const args = ['-chardev', `socket,id=chrtpm,path=${socket}`, '-tpmdev', 'emulator,id=tpm0,chardev=chrtpm', '-device', 'tpm-tis,tpmdev=tpm0'];
      anchor.push((await bootGuest({ kernel, initramfs, loadCommands: COMMANDS, qemuArgs: args })).loadRate!);
      swtpm.kill('SIGKILL');
    }
    await call(server.url, token, 'DELETE', `/v1/vtpms/${vm}`);
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
