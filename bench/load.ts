/**
 * Load: hundreds of concurrent clients (loopback only, keep-alive) send mixed
 * API traffic to a `vtpm serve` in its own process for a bounded time, while
 * its running vTPMs' state changes and is committed: reads of every kind,
 * creates and deletes, and requests that are meant to fail (no token, a bad
 * body). Every answer must be the one asked for; the service's resident
 * memory is sampled every second and must stay flat after the warm-up.
 *
 * `npm run bench -- load [--clients N] [--seconds S]`; scripts/test runs a
 * short one. Exits non-zero on an unexpected answer or on memory growth.
 */
import { randomUUID } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { apiClient, benchRoot, inBatches, serveAsProcess } from './harness.js';
import { p99OrMax, summarize, table } from './stats.js';

const VTPMS = 12;
const RUNNING = 6;
const WARM_UP_S = 5;
/** Resident memory may grow this much from the first to the second half after the warm-up. */
const RSS_GROWTH_ALLOWED = 0.15;

interface Call {
  route: string;
  method: string;
  path: string;
  body?: unknown;
  token?: boolean;
  /** The statuses this request may get. */
  expect: number[];
}

function option(args: string[], name: string, fallback: number): number {
  const at = args.indexOf(name);
  const value = at >= 0 ? Number(args[at + 1]) : fallback;
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name} takes a positive whole number`);
  return value;
}

async function residentKib(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN);
}

function send(agent: Agent, url: string, token: string, call: Call): Promise<number> {
  return new Promise((resolve, reject) => {
    const body = call.body === undefined ? undefined : JSON.stringify(call.body);
    const headers: Record<string, string> = {
      ...(call.token === false ? {} : { authorization: `Bearer ${token}` }),
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    };
    request(`${url}${call.path}`, { agent, method: call.method, headers }, (response) => {
      response.resume();
      response.once('end', () => resolve(response.statusCode ?? 0));
    })
      .once('error', reject)
      .end(body);
  });
}

export async function runLoadBenchmark(args: string[]): Promise<{ table: string; results: unknown }> {
  const clients = option(args, '--clients', 200);
  const seconds = option(args, '--seconds', 60);
  const root = await benchRoot();
  const dataDir = join(root, 'data');
  const service = await serveAsProcess(dataDir);
  const api = apiClient(service.url, service.token);
  try {
    const vms = Array.from({ length: VTPMS }, () => randomUUID());
    await inBatches(vms, 2, async (vm) => void (await api('POST', '/v1/vtpms', { vm, version: '2.0' })), 'created');
    const running = vms.slice(0, RUNNING);
    for (const vm of running) await api('POST', `/v1/vtpms/${vm}/start`);
    const pick = <T>(items: T[]) => items[Math.floor(Math.random() * items.length)]!;
    const mix = (): Call => {
      const vm = pick(vms);
      const roll = Math.random();
      if (roll < 0.3) return { route: 'GET /v1/vtpms/{vm}', method: 'GET', path: `/v1/vtpms/${vm}`, expect: [200] };
      if (roll < 0.45) return { route: 'GET /v1/vtpms', method: 'GET', path: '/v1/vtpms', expect: [200] };
      if (roll < 0.6) {
        return {
          route: 'GET /v1/vtpms/{vm}/generations',
          method: 'GET',
          path: `/v1/vtpms/${vm}/generations`,
          expect: [200],
        };
      }
      if (roll < 0.7) return { route: 'GET /v1/hosts', method: 'GET', path: '/v1/hosts', expect: [200] };
      if (roll < 0.8) return { route: 'GET /v1/events', method: 'GET', path: '/v1/events?limit=20', expect: [200] };
      if (roll < 0.9) {
        return { route: 'no token', method: 'GET', path: `/v1/vtpms/${vm}`, token: false, expect: [401, 429] };
      }
      return { route: 'bad body', method: 'POST', path: '/v1/vtpms', body: { vm: 42 }, expect: [400] };
    };

    const latencies = new Map<string, number[]>();
    const unexpected: Array<{ route: string; status: number }> = [];
    const rss: number[] = [];
    const until = performance.now() + seconds * 1000;
    let writes = 0;
    const agent = new Agent({ keepAlive: true, maxSockets: clients });
    const sampler = (async () => {
      while (performance.now() < until) {
        rss.push(await residentKib(service.child.pid!));
        await delay(1000);
      }
    })();
    // The running vTPMs' state changes all the time, as swtpm writes it (a new file renamed over the old).
    const writer = (async () => {
      while (performance.now() < until) {
        const vm = pick(running);
        const file = join(dataDir, 'tpm', vm, 'tpm2-00.permall');
        await writeFile(`${file}.load`, `state ${writes++} ${randomUUID()}`);
        await rename(`${file}.load`, file);
        await delay(20);
      }
    })();
    const lifecycle = (async () => {
      while (performance.now() < until) {
        const vm = randomUUID();
        const started = performance.now();
        await api('POST', '/v1/vtpms', { vm, version: '2.0' });
        await api('DELETE', `/v1/vtpms/${vm}`);
        const samples = latencies.get('create + delete') ?? [];
        samples.push(performance.now() - started);
        latencies.set('create + delete', samples);
      }
    })();
    await Promise.all(
      Array.from({ length: clients }, async () => {
        while (performance.now() < until) {
          const call = mix();
          const started = performance.now();
          const status = await send(agent, service.url, service.token, call).catch(() => 0);
          const samples = latencies.get(call.route) ?? [];
          samples.push(performance.now() - started);
          latencies.set(call.route, samples);
          if (!call.expect.includes(status)) unexpected.push({ route: call.route, status });
        }
      }),
    );
    await Promise.all([sampler, writer, lifecycle]);
    agent.destroy();

    // Flat: after the warm-up, the second half's peak is not above the first half's (by more than the allowance).
    const afterWarmUp = rss.slice(Math.max(WARM_UP_S, Math.floor(rss.length / 3)));
    const half = Math.floor(afterWarmUp.length / 2);
    const baseline = Math.max(...afterWarmUp.slice(0, half));
    const growth = (Math.max(...afterWarmUp.slice(half)) - baseline) / baseline;
    const rows = [...latencies].map(([route, samples]) => {
      const s = summarize(samples);
      return { route, requests: s.count, 'p50 ms': s.p50.toFixed(1), 'p99 ms': p99OrMax(s) };
    });
    const failures = [
      ...(unexpected.length > 0
        ? [`${unexpected.length} unexpected answers, e.g. ${JSON.stringify(unexpected[0])}`]
        : []),
      ...(growth > RSS_GROWTH_ALLOWED ? [`resident memory grew ${(growth * 100).toFixed(0)} % after the warm-up`] : []),
    ];
    const summary =
      `${clients} clients, ${seconds} s, ${writes} state changes of ${RUNNING} running vTPMs; ` +
      `unexpected answers: ${unexpected.length}; service RSS peak ${(baseline / 1024).toFixed(0)} MiB ` +
      'in the first half after the warm-up, ' +
      `${(Math.max(...afterWarmUp.slice(half)) / 1024).toFixed(0)} MiB in the second (${(growth * 100).toFixed(1)} %)`;
    if (failures.length > 0) process.exitCode = 1;
    return {
      table: `${table(rows)}\n${summary}${failures.length > 0 ? `\nFAILED: ${failures.join('; ')}` : ''}`,
      results: { clients, seconds, writes, unexpected, rss_kib: rss, growth, routes: rows },
    };
  } finally {
    const vms = (await api('GET', '/v1/vtpms').catch(() => ({ vtpms: [] }))) as { vtpms: Array<{ vm: string }> };
    await inBatches(vms.vtpms, 4, async ({ vm }) => void (await api('DELETE', `/v1/vtpms/${vm}?force=true`)));
    service.child.kill('SIGTERM');
  }
}
