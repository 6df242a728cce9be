/**
 * Density: N vTPMs (default 1,000) running at once on this machine, each a
 * real swtpm with its control socket, managed by a `vtpm serve` running as its
 * own process. Reports the service's own resident memory and its CPU while
 * idle (read from /proc), and the sync lag while a tenth of the vTPMs change
 * state once a second (the writer renames the state file as swtpm does).
 *
 * Anchors, same run: the resident memory of the swtpm processes themselves
 * (what any vTPM costs, with or without a manager), and the start latency of a
 * swtpm started directly (spawn to socket accepting) beside `vtpm start`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import Sqlite from 'better-sqlite3';
import { apiClient, inBatches, socketAccepts } from './harness.js';
import { summarize, table } from './stats.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const IDLE_WINDOW_MS = 10_000;
const CHANGE_WINDOW_MS = 10_000;
const CLOCK_TICKS = 100;
const START_SAMPLES = 50;

async function rssKib(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
}

async function cpuTicks(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

async function startService(dataDir: string): Promise<{ child: ChildProcess; url: string; token: string }> {
  const child = spawn(process.execPath, [CLI, 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--log-level', 'warn', '--pool-size', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const match = /listening on (http:\/\/\S+)/.exec(out);
      if (match?.[1]) resolve(match[1]);
    });
    child.once('exit', (code) => reject(new Error(`vtpm serve exited ${code}`)));
  });
  return { child, url, token: (await readFile(join(dataDir, 'admin.token'), 'utf8')).trim() };
}

/** The anchor for start latency: swtpm on an unencrypted fresh state, spawn to socket accepting. */
async function directStart(root: string, runs: number): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < runs; i += 1) {
    const dir = join(root, `direct-${i}`);
    await mkdir(dir, { recursive: true });
    const socket = join(dir, 'sock');
    const started = performance.now();
    const child = spawn('swtpm', ['socket', '--tpm2', '--tpmstate', `dir=${dir}`, '--ctrl', `type=unixio,path=${socket}`, '--terminate'], { stdio: 'ignore' });
    while (!(await socketAccepts(socket))) await delay(2);
    samples.push(performance.now() - started);
    child.kill('SIGKILL');
  }
  return samples;
}

export async function runDensityBenchmark(args: string[]): Promise<{ table: string; results: unknown }> {
  const count = Number(args[0] ?? 1000);
  const root = await mkdtemp('/tmp/vtpm-bench-');
  const dataDir = join(root, 'data');
  const { child, url, token } = await startService(dataDir);
  const api = apiClient(url, token);
  const vms = Array.from({ length: count }, () => randomUUID());
  try {
    await inBatches(vms, 2, async (vm) => void (await api('POST', '/v1/vtpms', { vm, version: '2.0' })), 'created');
    // Start latency one at a time, as the anchor is measured; the rest in parallel batches.
    const startLatency: number[] = [];
    const timed = vms.slice(0, Math.min(START_SAMPLES, count));
    for (const vm of timed) {
      const started = performance.now();
      await api('POST', `/v1/vtpms/${vm}/start`);
      startLatency.push(performance.now() - started);
    }
    await inBatches(vms.slice(timed.length), 8, async (vm) => void (await api('POST', `/v1/vtpms/${vm}/start`)), 'started');
    const direct = summarize(await directStart(root, START_SAMPLES));
    await delay(5_000);

    const swtpmPids = (await readdir(join(dataDir, 'run'))).filter((f) => f.endsWith('.pid'));
    let swtpmRss = 0;
    for (const file of swtpmPids) swtpmRss += await rssKib(Number(await readFile(join(dataDir, 'run', file), 'utf8')));
    const serviceRss = await rssKib(child.pid!);
    const before = await cpuTicks(child.pid!);
    await delay(IDLE_WINDOW_MS);
    const idleCpu = ((await cpuTicks(child.pid!)) - before) / CLOCK_TICKS / (IDLE_WINDOW_MS / 1000);

    // A tenth of them change state once a second, staggered.
    const changing = vms.slice(0, Math.max(1, Math.floor(count / 10)));
    const since = new Date().toISOString();
    const renames: Array<{ digest: string; at: number }> = [];
    const until = Date.now() + CHANGE_WINDOW_MS;
    const busyBefore = await cpuTicks(child.pid!);
    await Promise.all(changing.map(async (vm) => {
      await delay(Math.random() * 1000);
      while (Date.now() < until) {
        const data = randomBytes(6172);
        const dir = join(dataDir, 'tpm', vm);
        await writeFile(join(dir, 'TMP2-00.permall'), data);
        const at = Date.now();
        await rename(join(dir, 'TMP2-00.permall'), join(dir, 'tpm2-00.permall'));
        renames.push({ digest: createHash('sha256').update(data).digest('hex'), at });
        await delay(1000);
      }
    }));
    await delay(1500);
    const busyCpu = ((await cpuTicks(child.pid!)) - busyBefore) / CLOCK_TICKS / ((CHANGE_WINDOW_MS + 1500) / 1000);
    const database = new Sqlite(join(dataDir, 'vtpm.sqlite'), { readonly: true });
    const committed = new Map((database.prepare("SELECT digest, created_at FROM state_generations WHERE reason = 'sync' AND created_at >= ?").all(since) as Array<{ digest: string; created_at: string }>)
      .map((row) => [row.digest, Date.parse(row.created_at)]));
    database.close();
    const lag = summarize(renames.flatMap(({ digest, at }) => (committed.has(digest) ? [committed.get(digest)! - at] : [])));
    const start = summarize(startLatency);

    const results = {
      running: swtpmPids.length,
      service_rss_mib: serviceRss / 1024,
      service_rss_per_vtpm_kib: serviceRss / swtpmPids.length,
      anchor_swtpm_rss_per_process_kib: swtpmRss / swtpmPids.length,
      service_idle_cpu_fraction_of_one_core: idleCpu,
      service_cpu_while_a_tenth_change: busyCpu,
      sync: { changes: renames.length, committed: lag.count, lag_ms: lag },
      start_ms: start,
      anchor_direct_swtpm_start_ms: direct,
    };
    return {
      table: table([
        { measure: 'vTPMs running (swtpm processes)', value: String(swtpmPids.length), anchor: '' },
        { measure: 'service resident memory', value: `${(serviceRss / 1024).toFixed(0)} MiB`, anchor: '' },
        { measure: 'service memory per vTPM', value: `${(serviceRss / swtpmPids.length).toFixed(0)} KiB`, anchor: `swtpm itself: ${(swtpmRss / swtpmPids.length).toFixed(0)} KiB per process` },
        { measure: 'service CPU, idle', value: `${(idleCpu * 100).toFixed(2)} % of one core`, anchor: '' },
        { measure: 'service CPU, a tenth changing 1/s', value: `${(busyCpu * 100).toFixed(1)} % of one core`, anchor: '' },
        { measure: 'sync lag p50 / p99 / max', value: `${lag.p50} / ${lag.p99} / ${lag.max} ms (${lag.count}/${renames.length} committed)`, anchor: '' },
        { measure: 'vtpm start p50 / p99', value: `${start.p50.toFixed(1)} / ${start.p99.toFixed(1)} ms`, anchor: `swtpm started directly: ${direct.p50.toFixed(1)} / ${direct.p99.toFixed(1)} ms` },
      ]),
      results,
    };
  } finally {
    await inBatches(vms, 16, async (vm) => void (await api('DELETE', `/v1/vtpms/${vm}?force=true`).catch(() => undefined)), 'deleted');
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
    await rm(root, { recursive: true, force: true });
  }
}
