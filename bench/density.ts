/**
 * Density: N vTPMs (default 1,000) running at once on this machine, each a
 * real swtpm managed by a `vtpm serve` running as its own process, each with a
 * load client connected to its control socket as QEMU would be (data channel
 * passed as a descriptor, TPM started). Reports the service's own resident
 * memory and CPU (read from /proc) while idle and while every vTPM answers a
 * TPM command a second, and the sync lag while a tenth of the vTPMs change
 * their persistent state once a second through TPM2_NV_Write: from sending the
 * command to the vault's commit of the state swtpm wrote.
 *
 * Anchor, same run: the resident memory of the swtpm processes themselves,
 * what any vTPM costs with or without a manager.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import Sqlite from 'better-sqlite3';
import { apiClient, benchRoot, inBatches, serveAsProcess } from './harness.js';
import { p99OrMax, summarize, table } from './stats.js';
import { responseCode, tpm2 } from '../src/swtpm/tpm2-commands.js';
import { TpmChannel } from './tpm-load-client.js';

const WINDOW_MS = 10_000;
const CLOCK_TICKS = 100;
const NV_INDEX = 0x0150_0001;

async function rssKib(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
}

async function cpuTicks(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

/** Per VM, the commit times of its synced TPM state generations, ascending. */
function commitTimes(dataDir: string, since: string): Map<string, number[]> {
  const database = new Sqlite(join(dataDir, 'vtpm.sqlite'), { readonly: true });
  try {
    const rows = database
      .prepare(
        "SELECT vm, created_at FROM state_generations WHERE kind = 'tpm' AND reason = 'sync' " +
          'AND created_at >= ? ORDER BY created_at',
      )
      .all(since) as Array<{ vm: string; created_at: string }>;
    const times = new Map<string, number[]>();
    for (const row of rows) times.set(row.vm, [...(times.get(row.vm) ?? []), Date.parse(row.created_at)]);
    return times;
  } finally {
    database.close();
  }
}

/** Lag of each change: its first commit at or after the send and before the next change of the same VM. */
function lagsOf(changes: Map<string, number[]>, commits: Map<string, number[]>): number[] {
  const lags: number[] = [];
  for (const [vm, sent] of changes) {
    const times = commits.get(vm) ?? [];
    sent.forEach((at, i) => {
      const next = sent[i + 1] ?? Number.POSITIVE_INFINITY;
      const commit = times.find((t) => t >= at && t < next);
      if (commit !== undefined) lags.push(commit - at);
    });
  }
  return lags;
}

async function cpuOver(pid: number, windowMs: number, during: (until: number) => Promise<void>): Promise<number> {
  const before = await cpuTicks(pid);
  const started = Date.now();
  await during(started + windowMs);
  const elapsed = Date.now() - started;
  return ((await cpuTicks(pid)) - before) / CLOCK_TICKS / (elapsed / 1000);
}

/** Calls `work` once a second per item, staggered over the first second, until `until`. */
async function everySecond<T>(items: T[], until: number, work: (item: T) => Promise<void>): Promise<void> {
  await Promise.all(
    items.map(async (item) => {
      await delay(Math.random() * 1000);
      while (Date.now() < until) {
        const next = Date.now() + 1000;
        await work(item);
        await delay(Math.max(0, next - Date.now()));
      }
    }),
  );
}

export async function runDensityBenchmark(args: string[]): Promise<{ table: string; results: unknown }> {
  const count = Number(args[0] ?? 1000);
  const root = await benchRoot();
  const dataDir = join(root, 'data');
  const { child, url, token } = await serveAsProcess(dataDir);
  const api = apiClient(url, token);
  const vms = Array.from({ length: count }, () => randomUUID());
  const channels = new Map<string, TpmChannel>();
  try {
    await inBatches(vms, 2, async (vm) => void (await api('POST', '/v1/vtpms', { vm, version: '2.0' })), 'created');
    await inBatches(
      vms,
      8,
      async (vm) => {
        const { socket } = (await api('POST', `/v1/vtpms/${vm}/start`)) as { socket: string };
        channels.set(vm, await TpmChannel.open(socket));
      },
      'started and connected',
    );
    const changing = vms.slice(0, Math.max(1, Math.floor(count / 10)));
    await inBatches(changing, 8, async (vm) =>
      expectSuccess(await channels.get(vm)!.send(tpm2.nvDefineSpace(NV_INDEX, 8)), 'TPM2_NV_DefineSpace'),
    );
    await delay(5_000);

    const swtpmPids = (await readdir(join(dataDir, 'run'))).filter((f) => f.endsWith('.pid'));
    let swtpmRss = 0;
    for (const file of swtpmPids) swtpmRss += await rssKib(Number(await readFile(join(dataDir, 'run', file), 'utf8')));
    const serviceRss = await rssKib(child.pid!);
    const idleCpu = await cpuOver(child.pid!, WINDOW_MS, (until) => delay(until - Date.now()));
    let answered = 0;
    const readingCpu = await cpuOver(child.pid!, WINDOW_MS, (until) =>
      everySecond(vms, until, async (vm) => {
        expectSuccess(await channels.get(vm)!.send(tpm2.getRandom16), 'TPM2_GetRandom');
        answered += 1;
      }),
    );

    const since = new Date().toISOString();
    const changes = new Map<string, number[]>(changing.map((vm) => [vm, []]));
    const changingCpu = await cpuOver(child.pid!, WINDOW_MS, (until) =>
      everySecond(changing, until, async (vm) => {
        const at = Date.now();
        expectSuccess(await channels.get(vm)!.send(tpm2.nvWrite(NV_INDEX, randomBytes(8))), 'TPM2_NV_Write');
        changes.get(vm)!.push(at);
      }),
    );
    await delay(2_000);
    const changeCount = [...changes.values()].reduce((n, sent) => n + sent.length, 0);
    const lag = summarize(lagsOf(changes, commitTimes(dataDir, since)));

    const results = {
      running: swtpmPids.length,
      connected_load_clients: channels.size,
      service_rss_mib: serviceRss / 1024,
      service_rss_per_vtpm_kib: serviceRss / swtpmPids.length,
      anchor_swtpm_rss_per_process_kib: swtpmRss / swtpmPids.length,
      service_idle_cpu_fraction_of_one_core: idleCpu,
      service_cpu_while_every_vtpm_answers_one_command_a_second: readingCpu,
      commands_answered_in_that_window: answered,
      service_cpu_while_a_tenth_change: changingCpu,
      sync: { changes: changeCount, committed: lag.count, lag_ms: lag },
    };
    const percent = (fraction: number) => `${(fraction * 100).toFixed(2)} % of one core`;
    return {
      table: table([
        {
          measure: 'vTPMs running (swtpm processes)',
          value: `${swtpmPids.length}, ${channels.size} with a load client connected`,
          anchor: '',
        },
        { measure: 'service resident memory', value: `${(serviceRss / 1024).toFixed(0)} MiB`, anchor: '' },
        {
          measure: 'service memory per vTPM',
          value: `${(serviceRss / swtpmPids.length).toFixed(0)} KiB`,
          anchor: `swtpm itself: ${(swtpmRss / swtpmPids.length).toFixed(0)} KiB per process`,
        },
        { measure: 'service CPU, idle', value: percent(idleCpu), anchor: '' },
        {
          measure: 'service CPU, every vTPM answering 1 command/s',
          value: `${percent(readingCpu)} (${answered} answered)`,
          anchor: '',
        },
        { measure: 'service CPU, a tenth writing NV 1/s', value: percent(changingCpu), anchor: '' },
        {
          measure: 'sync lag p50 / p99 / max',
          value: `${lag.p50} / ${p99OrMax(lag, 0)} / ${lag.max} ms (${lag.count}/${changeCount} committed)`,
          anchor: '',
        },
      ]),
      results,
    };
  } finally {
    for (const channel of channels.values()) channel.close();
    await inBatches(
      vms,
      16,
      async (vm) => void (await api('DELETE', `/v1/vtpms/${vm}?force=true`).catch(() => undefined)),
      'deleted',
    );
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
    await rm(root, { recursive: true, force: true });
  }
}

function expectSuccess(response: Buffer, name: string): void {
  if (responseCode(response) !== 0) throw new Error(`${name} answered 0x${responseCode(response).toString(16)}`);
}
