/**
 * Start latency and guest-visible TPM readiness, against swtpm started
 * directly (as libvirt would, with the same options).
 *
 * - start: `vtpm start` (API call until it answers, which is after the socket
 *   accepts) against spawning swtpm until its socket accepts; one at a time.
 * - guest-visible readiness: from the request to start (API call, or spawning
 *   swtpm) to the guest's first TPM response on its serial console, with QEMU
 *   launched as soon as the socket is there. Rounds alternate between the two
 *   paths. The guest's own boot is in both figures; the difference between
 *   them is what vtpm-manager adds where a user waits.
 */
import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { buildInitramfs, findKernel, launchGuest } from '../test/e2e/support/guest.js';
import { benchRoot, serveInProcess, startSwtpmDirectly, untilStopped } from './harness.js';
import { p99OrMax, summarize, table } from './stats.js';

const START_SAMPLES = 50;
const GUEST_ROUNDS = 7;
const ANCHOR_QEMU_ARGS = (socket: string) => [
  '-chardev',
  `socket,id=chrtpm,path=${socket}`,
  '-tpmdev',
  'emulator,id=tpm0,chardev=chrtpm',
  '-device',
  'tpm-tis,tpmdev=tpm0',
];

async function guestReadiness(kernel: string, initramfs: string, begin: number, qemuArgs: string[]): Promise<number> {
  const guest = launchGuest({ kernel, initramfs, qemuArgs });
  await guest.report;
  const answered = guest.tpmAnsweredAt();
  if (answered === undefined) throw new Error('the guest printed no TPM response');
  return answered - begin;
}

export async function runStartBenchmark(): Promise<{ table: string; results: unknown }> {
  const root = await benchRoot();
  const { server, api } = await serveInProcess(join(root, 'data'), 0);
  try {
    const vm = randomUUID();
    await api('POST', '/v1/vtpms', { vm, version: '2.0' });

    const productStart: number[] = [];
    const anchorStart: number[] = [];
    for (let i = 0; i < START_SAMPLES; i += 1) {
      const begin = performance.now();
      await api('POST', `/v1/vtpms/${vm}/start`);
      productStart.push(performance.now() - begin);
      await api('POST', `/v1/vtpms/${vm}/stop`);
      const direct = await startSwtpmDirectly(join(root, `direct-${i}`));
      anchorStart.push(direct.startMs);
      direct.kill();
    }

    const kernel = await findKernel();
    const initramfs = await buildInitramfs(root);
    const productReady: number[] = [];
    const anchorReady: number[] = [];
    for (let round = 0; round < GUEST_ROUNDS; round += 1) {
      process.stderr.write(`guest round ${round + 1}/${GUEST_ROUNDS}\n`);
      let begin = performance.now();
      const started = (await api('POST', `/v1/vtpms/${vm}/start`)) as { qemu_args: string[] };
      productReady.push(await guestReadiness(kernel, initramfs, begin, started.qemu_args));
      await untilStopped(api, vm);

      begin = performance.now();
      const direct = await startSwtpmDirectly(join(root, `guest-direct-${round}`));
      try {
        anchorReady.push(await guestReadiness(kernel, initramfs, begin, ANCHOR_QEMU_ARGS(direct.socket)));
      } finally {
        direct.kill();
      }
    }
    await api('DELETE', `/v1/vtpms/${vm}`);

    const ps = summarize(productStart);
    const as = summarize(anchorStart);
    const pr = summarize(productReady);
    const ar = summarize(anchorReady);
    const ms = (v: number) => `${v.toFixed(1)} ms`;
    return {
      table: table([
        {
          measure: '`vtpm start` to socket accepting',
          runs: ps.count,
          p50: ms(ps.p50),
          p99: `${p99OrMax(ps)} ms`,
          'anchor p50': ms(as.p50),
          'anchor p99': `${p99OrMax(as)} ms`,
          'p50 ratio': (ps.p50 / as.p50).toFixed(2),
        },
        {
          measure: 'start to first TPM response in the guest',
          runs: pr.count,
          p50: ms(pr.p50),
          p99: `${p99OrMax(pr)} ms`,
          'anchor p50': ms(ar.p50),
          'anchor p99': `${p99OrMax(ar)} ms`,
          'p50 ratio': (pr.p50 / ar.p50).toFixed(2),
        },
      ]),
      results: {
        start_ms: productStart,
        anchor_start_ms: anchorStart,
        guest_ready_ms: productReady,
        anchor_guest_ready_ms: anchorReady,
      },
    };
  } finally {
    await server.close();
    await rm(root, { recursive: true, force: true });
  }
}
