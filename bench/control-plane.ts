/**
 * Control-plane request throughput: authenticated API reads answered by a
 * `vtpm serve` running as its own process (token check, store query,
 * response schema serialisation), against Node's bare HTTP server answering
 * the same bytes from memory, in its own process too: the ceiling of any
 * Node HTTP service on this machine. Both are driven by the same closed-loop
 * client (keep-alive connections, a fixed number of requests in flight), in
 * alternating windows.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { Agent, request } from 'node:http';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { apiClient, benchRoot, inBatches, serveAsProcess } from './harness.js';
import { summarize, table } from './stats.js';

const VTPMS = 20;
const IN_FLIGHT = 16;
const WINDOW_MS = 5_000;
const ROUNDS = 3;

interface Window {
  requestsPerSecond: number;
  latencies: number[];
}

async function drive(url: string, headers: Record<string, string>): Promise<Window> {
  const agent = new Agent({ keepAlive: true, maxSockets: IN_FLIGHT });
  const latencies: number[] = [];
  const until = performance.now() + WINDOW_MS;
  const once = () =>
    new Promise<void>((resolve, reject) => {
      const started = performance.now();
      request(url, { agent, headers }, (response) => {
        response.resume();
        response.once('end', () => {
          if (response.statusCode !== 200) reject(new Error(`${url}: HTTP ${response.statusCode}`));
          latencies.push(performance.now() - started);
          resolve();
        });
      })
        .once('error', reject)
        .end();
    });
  const began = performance.now();
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (performance.now() < until) await once();
    }),
  );
  const elapsed = performance.now() - began;
  agent.destroy();
  return { requestsPerSecond: latencies.length / (elapsed / 1000), latencies };
}

/** Node's bare HTTP server answering `body` to every request, in a process of its own. */
async function bareServer(body: string): Promise<{ child: ChildProcess; url: string }> {
  const program = `
    const body = Buffer.from(process.env.BODY);
    require('node:http').createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': body.length });
      res.end(body);
    }).listen(0, '127.0.0.1', function () { process.stdout.write('port ' + this.address().port + '\\n'); });`;
  const child = spawn(process.execPath, ['-e', program], {
    env: { ...process.env, BODY: body },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<string>((resolve, reject) => {
    child.stdout!.once('data', (chunk: Buffer) => resolve(/port (\d+)/.exec(chunk.toString())?.[1] ?? ''));
    child.once('exit', (code) => reject(new Error(`bare HTTP server exited ${code}`)));
  });
  return { child, url: `http://127.0.0.1:${port}` };
}

export async function runControlPlaneBenchmark(): Promise<{ table: string; results: unknown }> {
  const root = await benchRoot();
  const service = await serveAsProcess(join(root, 'data'));
  const api = apiClient(service.url, service.token);
  const anchors: ChildProcess[] = [];
  try {
    const vms = Array.from({ length: VTPMS }, () => randomUUID());
    await inBatches(vms, 2, async (vm) => void (await api('POST', '/v1/vtpms', { vm, version: '2.0' })), 'created');
    const auth = { authorization: `Bearer ${service.token}` };
    const endpoints = [
      { name: `GET /v1/vtpms/{vm}`, path: `/v1/vtpms/${vms[0]}` },
      { name: `GET /v1/vtpms (${VTPMS} vTPMs)`, path: '/v1/vtpms' },
    ];
    const rows: Array<Record<string, string>> = [];
    const results: Record<string, unknown> = {};
    for (const endpoint of endpoints) {
      const body = JSON.stringify(await api('GET', endpoint.path));
      const anchor = await bareServer(body);
      anchors.push(anchor.child);
      const product: Window[] = [];
      const bare: Window[] = [];
      for (let round = 0; round < ROUNDS; round += 1) {
        process.stderr.write(`${endpoint.name}: round ${round + 1}/${ROUNDS}\n`);
        product.push(await drive(`${service.url}${endpoint.path}`, auth));
        bare.push(await drive(`${anchor.url}${endpoint.path}`, auth));
      }
      const rate = (windows: Window[]) => summarize(windows.map((w) => w.requestsPerSecond)).p50;
      const latency = (windows: Window[]) => summarize(windows.flatMap((w) => w.latencies));
      const [p, a] = [latency(product), latency(bare)];
      rows.push({
        request: endpoint.name,
        'requests/s': rate(product).toFixed(0),
        'p50 / p99': `${p.p50.toFixed(1)} / ${p.p99.toFixed(1)} ms`,
        'anchor requests/s': rate(bare).toFixed(0),
        'anchor p50 / p99': `${a.p50.toFixed(1)} / ${a.p99.toFixed(1)} ms`,
        ratio: (rate(product) / rate(bare)).toFixed(2),
      });
      results[endpoint.name] = {
        requests_per_s: product.map((w) => w.requestsPerSecond),
        latency_ms: p,
        anchor_requests_per_s: bare.map((w) => w.requestsPerSecond),
        anchor_latency_ms: a,
      };
      anchor.child.kill();
    }
    await inBatches(vms, 8, async (vm) => void (await api('DELETE', `/v1/vtpms/${vm}`)));
    return {
      table:
        table(rows) +
        `\n(${IN_FLIGHT} requests in flight, ${ROUNDS} alternating windows of ${WINDOW_MS / 1000} s each)`,
      results: { in_flight: IN_FLIGHT, ...results },
    };
  } finally {
    for (const child of anchors) child.kill();
    service.child.kill('SIGTERM');
    await new Promise((resolve) => service.child.once('exit', resolve));
    await rm(root, { recursive: true, force: true });
  }
}
