/**
 * Control-plane request throughput: authenticated API reads answered by a
 * `vtpm serve` running as its own process at its default log level (token
 * check, store read, policy, response schema serialisation), against two
 * anchors in processes of their own serving the same JSON: a bare fastify
 * route with the same response schema (what the framework itself costs) and
 * Node's bare HTTP server (the ceiling of any Node HTTP service here). One
 * external load generator, wrk, drives all three with the same threads,
 * connections and window, in rounds that interleave them.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AnchorRoute } from './api-anchor-server.js';
import { apiClient, benchRoot, inBatches, serveAsProcess } from './harness.js';
import { summarize, table } from './stats.js';
import { ensureWrk, runWrk, tokenScript, type WrkLoad, type WrkReport } from './wrk.js';

const VTPMS = 20;
const LOAD: WrkLoad = { threads: 1, connections: 16, durationS: 5 };
const WARM_UP: WrkLoad = { ...LOAD, durationS: 2 };
const ROUNDS = 3;
const ANCHOR_PROGRAM = fileURLToPath(new URL('./api-anchor-server.js', import.meta.url));

const SERVERS = ['vtpm serve', 'fastify route', 'bare http'] as const;
type ServerName = (typeof SERVERS)[number];

async function startAnchor(
  kind: 'bare' | 'fastify',
  routes: AnchorRoute[],
): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [ANCHOR_PROGRAM, kind], {
    env: { ...process.env, ANCHOR_ROUTES: JSON.stringify(routes) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<string>((resolve, reject) => {
    child.stdout!.once('data', (chunk: Buffer) => resolve(/port (\d+)/.exec(chunk.toString())?.[1] ?? ''));
    child.once('exit', (code) => reject(new Error(`the ${kind} anchor exited with ${code}`)));
  });
  return { child, url: `http://127.0.0.1:${port}` };
}

const median = (values: number[]) => summarize(values).p50;

/** One round's servers in an order shifted each round, so that none always runs first or right after another. */
const orderOf = (round: number): ServerName[] => SERVERS.map((_, i) => SERVERS[(i + round) % SERVERS.length]!);

export async function runControlPlaneBenchmark(): Promise<{ table: string; results: unknown }> {
  ensureWrk();
  const root = await benchRoot();
  // At the service's default log level (info), as an operator runs it.
  const service = await serveAsProcess(join(root, 'data'), { logLevel: 'info' });
  const api = apiClient(service.url, service.token);
  const anchors: ChildProcess[] = [];
  try {
    const script = await tokenScript(root);
    const vms = Array.from({ length: VTPMS }, () => randomUUID());
    await inBatches(vms, 2, async (vm) => void (await api('POST', '/v1/vtpms', { vm, version: '2.0' })), 'created');
    const endpoints = [
      { name: 'GET /v1/vtpms/{vm}', route: '/v1/vtpms/:vm', path: `/v1/vtpms/${vms[0]}`, schema: 'Vtpm' as const },
      { name: `GET /v1/vtpms (${VTPMS} vTPMs)`, route: '/v1/vtpms', path: '/v1/vtpms', schema: 'VtpmList' as const },
    ];
    const routes = await Promise.all(endpoints.map(async (e) => ({ ...e, body: await api('GET', e.path) })));
    const bare = await startAnchor('bare', routes);
    const fastify = await startAnchor('fastify', routes);
    anchors.push(bare.child, fastify.child);
    const base: Record<ServerName, string> = {
      'vtpm serve': service.url,
      'fastify route': fastify.url,
      'bare http': bare.url,
    };

    const rows: Array<Record<string, string>> = [];
    const results: Record<string, unknown> = {};
    for (const endpoint of endpoints) {
      const windows = Object.fromEntries(SERVERS.map((s) => [s, [] as WrkReport[]])) as Record<ServerName, WrkReport[]>;
      for (const server of SERVERS) await runWrk(`${base[server]}${endpoint.path}`, WARM_UP, script, service.token);
      for (let round = 0; round < ROUNDS; round += 1) {
        process.stderr.write(`${endpoint.name}: round ${round + 1}/${ROUNDS}\n`);
        for (const server of orderOf(round)) {
          windows[server].push(await runWrk(`${base[server]}${endpoint.path}`, LOAD, script, service.token));
        }
      }
      const rate = (server: ServerName) => median(windows[server].map((w) => w.requestsPerSecond));
      const latency = (server: ServerName, p: 'p50' | 'p90' | 'p99') =>
        median(windows[server].map((w) => w.latencyMs[p])).toFixed(2);
      for (const server of SERVERS) {
        rows.push({
          request: endpoint.name,
          server,
          'requests/s': rate(server).toFixed(0),
          'p50 / p90 / p99 ms': `${latency(server, 'p50')} / ${latency(server, 'p90')} / ${latency(server, 'p99')}`,
          '/ fastify': (rate(server) / rate('fastify route')).toFixed(2),
          '/ bare http': (rate(server) / rate('bare http')).toFixed(2),
        });
      }
      results[endpoint.name] = {
        windows,
        'vtpm/fastify': rate('vtpm serve') / rate('fastify route'),
        'vtpm/bare-http': rate('vtpm serve') / rate('bare http'),
      };
    }
    await inBatches(vms, 8, async (vm) => void (await api('DELETE', `/v1/vtpms/${vm}`)));
    const method =
      `wrk -t${LOAD.threads} -c${LOAD.connections}, ${ROUNDS} interleaved rounds of ${LOAD.durationS} s per server ` +
      `after a ${WARM_UP.durationS} s warm-up; medians over the rounds (latencies: of each round's wrk percentile)`;
    return { table: `${table(rows)}\n(${method})`, results: { load: LOAD, rounds: ROUNDS, ...results } };
  } finally {
    for (const child of anchors) child.kill();
    service.child.kill('SIGTERM');
    await new Promise((resolve) => service.child.once('exit', resolve));
    await rm(root, { recursive: true, force: true });
  }
}
