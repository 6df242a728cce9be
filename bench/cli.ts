/**
 * CLI latency: whole `vtpm` processes (`node dist/src/cli/main.js COMMAND`, as a user runs them) against a
 * `vtpm serve` in its own process at its default log level, beside anchors run in the same loop, in an
 * order that rotates from one sample to the next:
 * - the same API requests made by a minimal Node process (`node -e`, node:http, the module the CLI uses):
 *   CLI minus this is what the CLI's own code costs beyond any Node client;
 * - the same requests made by curl: the API call itself; CLI minus this is the CLI's own time, Node's
 *   start-up included;
 * - `node -e 0`: Node's own start-up.
 * `--baseline MAIN_JS` adds another build of the CLI (the one before a change) as one more side;
 * `--samples N` sets the samples per command (default 15, after 2 not counted).
 * A `create` waits, untimed, until the pool is full again, so that no manufacture runs beside a sample.
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { apiClient, benchRoot, CLI, serveAsProcess, type Api } from './harness.js';
import { table } from './stats.js';

const WARMUP = 2;
const POOL_SIZE = 2;
const LISTED_VTPMS = 5;

interface Request {
  method: string;
  path: string;
  body?: unknown;
}

/** One command and the API requests it makes, in order. */
interface Step {
  name: string;
  cli: (vm: string) => string[];
  requests: (vm: string) => Request[];
  /** Untimed, before each side runs the step. */
  before?: () => Promise<void>;
}

/** Steps run in sequence by each side in turn, on a vTPM of that side's (`vm`), once per sample. */
interface Case {
  steps: Step[];
  vm: (side: string, sample: number) => string;
}

const vtpmPath = (vm: string) => `/v1/vtpms/${vm}`;

/** What one process took, in ms; any exit but 0 ends the benchmark, with what the process said. */
function timed(program: string, args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(program, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let said = '';
    child.stdout.resume();
    child.stderr.on('data', (chunk: Buffer) => (said += chunk.toString()));
    child.once('error', reject);
    child.once('close', (code) => {
      const ms = performance.now() - started;
      if (code === 0) resolve(ms);
      else reject(new Error(`${program} ${args.join(' ')} exited ${code}: ${said.trim()}`));
    });
  });
}

/** The minimal Node client: the requests of REQUESTS, one after the other, each answer printed. */
const NODE_CLIENT = `
const { request } = require('node:http');
const send = (r) => new Promise((resolve, reject) => {
  const body = r.body === undefined ? undefined : JSON.stringify(r.body);
  const headers = { authorization: 'Bearer ' + process.env.TOKEN, ...(body && { 'content-type': 'application/json' }) };
  request(process.env.URL + r.path, { method: r.method, headers }, (response) => {
    const chunks = [];
    response.on('data', (chunk) => chunks.push(chunk));
    response.on('end', () => {
      process.stdout.write(Buffer.concat(chunks));
      response.statusCode < 400 ? resolve() : reject(new Error('HTTP ' + response.statusCode));
    });
  }).on('error', reject).end(body);
});
(async () => { for (const r of JSON.parse(process.env.REQUESTS)) await send(r); })()
  .catch((error) => { console.error(error.message); process.exit(1); });`;

/** curl's arguments for the same requests; the token comes from a header file, never a command line. */
function curlArgs(url: string, headerFile: string, requests: Request[]): string[] {
  return requests.flatMap((r, i) => [
    ...(i > 0 ? ['--next'] : []),
    '-sS',
    '--fail-with-body',
    '-H',
    `@${headerFile}`,
    '-X',
    r.method,
    ...(r.body === undefined ? [] : ['-H', 'content-type: application/json', '--data', JSON.stringify(r.body)]),
    `${url}${r.path}`,
  ]);
}

async function untilPoolFull(api: Api): Promise<void> {
  while (((await api('GET', '/v1/pool')) as { ready: Record<string, number> }).ready['2.0']! < POOL_SIZE)
    await delay(50);
}

/** Median, 90th percentile and maximum: with samples this few, the tail is the maximum, not a p99. */
function spread(samples: number[]): { median: number; p90: number; max: number } {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? Number.NaN;
  return { median: at(0.5), p90: at(0.9), max: sorted.at(-1) ?? Number.NaN };
}

const paired = (a: number[], b: number[], f: (x: number, y: number) => number) =>
  spread(a.map((x, i) => f(x, b[i]!))).median;

function option(args: string[], name: string): string | undefined {
  const at = args.indexOf(name);
  return at < 0 ? undefined : args[at + 1];
}

export async function runCliBenchmark(args: string[]): Promise<{ table: string; results: unknown }> {
  const samples = Number(option(args, '--samples') ?? 15);
  const baseline = option(args, '--baseline');
  const root = await benchRoot();
  const dataDir = join(root, 'data');
  const service = await serveAsProcess(dataDir, { logLevel: 'info', poolSize: POOL_SIZE });
  const api = apiClient(service.url, service.token);
  const headerFile = join(root, 'curl-headers');
  await writeFile(headerFile, `authorization: Bearer ${service.token}\n`, { mode: 0o600 });
  // NODE_EXTRA_CA_CERTS (set on some machines for npm) adds ~0.1 s to every Node start, the CLI's and the anchors'.
  const base = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith('VTPM_') && name !== 'NODE_EXTRA_CA_CERTS'),
  );
  const cliEnv = { ...base, VTPM_URL: service.url, VTPM_DATA_DIR: dataDir };
  const running = randomUUID();
  try {
    const listed = Array.from({ length: LISTED_VTPMS }, () => randomUUID());
    for (const vm of listed) await api('POST', '/v1/vtpms', { vm, version: '2.0' });
    const shown = listed[0]!;
    await api('POST', '/v1/vtpms', { vm: running, version: '2.0' });
    await untilPoolFull(api);

    const cases: Case[] = [
      {
        steps: [
          { name: 'list', cli: () => ['list'], requests: () => [{ method: 'GET', path: '/v1/vtpms' }] },
          { name: 'show VM', cli: (vm) => ['show', vm], requests: (vm) => [{ method: 'GET', path: vtpmPath(vm) }] },
        ],
        vm: () => shown,
      },
      {
        steps: [
          {
            name: 'create --vm VM --version 2.0',
            cli: (vm) => ['create', '--vm', vm, '--version', '2.0'],
            requests: (vm) => [{ method: 'POST', path: '/v1/vtpms', body: { vm, version: '2.0' } }],
            before: () => untilPoolFull(api),
          },
          {
            name: 'delete --yes VM',
            cli: (vm) => ['delete', '--yes', vm],
            requests: (vm) => [
              { method: 'DELETE', path: `${vtpmPath(vm)}?force=false&dry_run=true` },
              { method: 'DELETE', path: `${vtpmPath(vm)}?force=false` },
            ],
          },
        ],
        vm: () => randomUUID(),
      },
      {
        steps: [
          {
            name: 'start VM',
            cli: (vm) => ['start', vm],
            requests: (vm) => [{ method: 'POST', path: `${vtpmPath(vm)}/start` }],
          },
          {
            name: 'stop VM',
            cli: (vm) => ['stop', vm],
            requests: (vm) => [{ method: 'POST', path: `${vtpmPath(vm)}/stop` }],
          },
        ],
        vm: () => running,
      },
    ];

    const sides: Record<string, (step: Step, vm: string) => Promise<number>> = {
      cli: (step, vm) => timed(process.execPath, [CLI, ...step.cli(vm)], cliEnv),
      node: (step, vm) =>
        timed(process.execPath, ['-e', NODE_CLIENT], {
          ...base,
          URL: service.url,
          TOKEN: service.token,
          REQUESTS: JSON.stringify(step.requests(vm)),
        }),
      curl: (step, vm) => timed('curl', curlArgs(service.url, headerFile, step.requests(vm)), base),
      ...(baseline && {
        baseline: (step: Step, vm: string) => timed(process.execPath, [baseline, ...step.cli(vm)], cliEnv),
      }),
    };
    const names = Object.keys(sides);
    const figures = new Map<string, Record<string, number[]>>();
    for (const { steps, vm: vmOf } of cases) {
      for (const step of steps) figures.set(step.name, Object.fromEntries([...names, 'bare'].map((n) => [n, []])));
      for (let sample = -WARMUP; sample < samples; sample += 1) {
        const turn = ((sample % names.length) + names.length) % names.length;
        const order = [...names.slice(turn), ...names.slice(0, turn)];
        const bare = await timed(process.execPath, ['-e', '0'], base);
        for (const side of order) {
          const vm = vmOf(side, sample);
          for (const step of steps) {
            await step.before?.();
            const ms = await sides[side]!(step, vm);
            if (sample >= 0) figures.get(step.name)![side]!.push(ms);
          }
        }
        if (sample >= 0) for (const step of steps) figures.get(step.name)!.bare!.push(bare);
      }
      process.stderr.write(`cli: ${steps.map((s) => s.name).join(', ')} done\n`);
    }

    const ms = (value: number) => value.toFixed(0);
    const rows = [...figures].map(([name, f]) => {
      const [cli, node, curl, bare] = [f.cli!, f.node!, f.curl!, f.bare!];
      const c = spread(cli);
      const n = spread(node);
      return {
        command: name,
        'CLI med / p90 / max': `${ms(c.median)} / ${ms(c.p90)} / ${ms(c.max)}`,
        'node client med / p90 / max': `${ms(n.median)} / ${ms(n.p90)} / ${ms(n.max)}`,
        'curl med': ms(spread(curl).median),
        'node -e 0 med': ms(spread(bare).median),
        'own (CLI - curl)': ms(paired(cli, curl, (x, y) => x - y)),
        'CLI - node client': ms(paired(cli, node, (x, y) => x - y)),
        'CLI / node client': paired(cli, node, (x, y) => x / y).toFixed(2),
        'CLI / node -e 0': paired(cli, bare, (x, y) => x / y).toFixed(2),
        ...(f.baseline && {
          'baseline med': ms(spread(f.baseline).median),
          'CLI / baseline': paired(cli, f.baseline, (x, y) => x / y).toFixed(2),
        }),
      };
    });
    return {
      table:
        `${table(rows)}\n(ms, whole processes; ${samples} samples per command after ${WARMUP} not counted; ` +
        'own, differences and ratios are medians of per-sample pairs)',
      results: { samples, warmup: WARMUP, baseline: baseline ?? null, ms: Object.fromEntries(figures) },
    };
  } finally {
    // serve leaves running swtpms running when it stops: a run that failed half-way stops its own.
    await api('POST', `${vtpmPath(running)}/stop`).catch(() => undefined);
    service.child.kill('SIGTERM');
    await new Promise((resolve) => service.child.once('exit', resolve));
    await rm(root, { recursive: true, force: true });
  }
}
