/** What the benchmarks share: an in-process `vtpm serve`, a minimal API client, the direct-swtpm anchor. */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import pino from 'pino';
import { startServer, type RunningServer } from '../src/serve/start-server.js';
import { handOver, KEY_FD } from '../src/swtpm/run-program.js';
import { SWTPM_KEY_OPTION } from '../src/swtpm/state-key.js';
import { socketAccepts } from '../src/swtpm/tpm-socket.js';
import { DEFAULT_RETENTION } from '../src/vault/retention.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

export type Api = (method: string, path: string, body?: unknown) => Promise<unknown>;

/** A fresh directory for a benchmark's service, which swtpm (running as its unprivileged user) may pass through. */
export async function benchRoot(): Promise<string> {
  const root = await mkdtemp('/tmp/vtpm-bench-');
  await chmod(root, 0o711);
  return root;
}

export async function untilStopped(api: Api, vm: string): Promise<void> {
  while (((await api('GET', `/v1/vtpms/${vm}`)) as { status: string }).status !== 'stopped') await delay(10);
}

export function apiClient(url: string, token: string): Api {
  return async (method, path, body) => {
    const response = await fetch(`${url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
    return response.status === 204 ? undefined : response.json();
  };
}

/**
 * `vtpm serve` as its own process (pool off), so that /proc figures are the service's alone; logging warnings
 * only, or with `logLevel` undefined at the level an operator gets without asking.
 */
export async function serveAsProcess(
  dataDir: string,
  logLevel: string | undefined = 'warn',
): Promise<{ child: ChildProcess; url: string; token: string }> {
  const level = logLevel === undefined ? [] : ['--log-level', logLevel];
  const child = spawn(
    process.execPath,
    [CLI, 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0', ...level, '--pool-size', '0'],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const match = /listening on (https?:\/\/\S+)/.exec(out);
      if (match?.[1]) resolve(match[1]);
    });
    child.once('exit', (code) => reject(new Error(`vtpm serve exited ${code}`)));
  });
  return { child, url, token: (await readFile(join(dataDir, 'admin.token'), 'utf8')).trim() };
}

/** `vtpm serve` in this process, on `dataDir`, logging warnings only. */
export async function serveInProcess(dataDir: string, poolSize: number): Promise<{ server: RunningServer; api: Api }> {
  const server = await startServer({
    dataDir,
    listen: '127.0.0.1:0',
    runDir: join(dataDir, 'run'),
    scratchDir: '/dev/shm',
    keyManager: 'local',
    retention: DEFAULT_RETENTION,
    poolSize,
    logger: pino({ level: 'warn' }, pino.destination(2)),
    version: 'bench',
  });
  return { server, api: apiClient(server.url, (await readFile(server.adminTokenPath, 'utf8')).trim()) };
}

export async function inBatches<T>(
  items: T[],
  width: number,
  work: (item: T) => Promise<void>,
  label?: string,
): Promise<void> {
  for (let i = 0; i < items.length; i += width) {
    await Promise.all(items.slice(i, i + width).map(work));
    if (label && (i / width) % 50 === 0)
      process.stderr.write(`${label}: ${Math.min(i + width, items.length)}/${items.length}\n`);
  }
}

export interface DirectSwtpm {
  socket: string;
  /** Spawn to control socket accepting, in ms. */
  startMs: number;
  kill: () => void;
}

/**
 * The anchor every start and data-path figure is compared with: swtpm started
 * directly, as libvirt would, with the options the product's agent uses
 * (TPM 2.0, state encrypted with a key on fd 3, --terminate), on a fresh state.
 */
export async function startSwtpmDirectly(dir: string): Promise<DirectSwtpm> {
  await mkdir(dir, { recursive: true });
  const socket = join(dir, 'ctrl.sock');
  await rm(socket, { force: true });
  const started = performance.now();
  const child = spawn(
    'swtpm',
    [
      'socket',
      '--tpm2',
      '--tpmstate',
      `dir=${dir},mode=0600`,
      '--ctrl',
      `type=unixio,path=${socket},mode=0600`,
      '--key',
      SWTPM_KEY_OPTION,
      '--terminate',
    ],
    { stdio: ['ignore', 'ignore', 'ignore', 'pipe'] },
  );
  handOver(child, KEY_FD, randomBytes(32).toString('hex'));
  while (!(await socketAccepts(socket))) {
    if (child.exitCode !== null) throw new Error(`swtpm exited with status ${child.exitCode}`);
    await delay(1);
  }
  return { socket, startMs: performance.now() - started, kill: () => child.kill('SIGKILL') };
}
