/** What the benchmarks share: an in-process `vtpm serve`, a minimal API client, the direct-swtpm anchor. */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import pino from 'pino';
import type { SystemUser } from '../src/agent/host-directories.js';
import { swtpmUserFor } from '../src/agent/host-setup.js';
import { startServer, type RunningServer } from '../src/serve/start-server.js';
import { probeCapabilities } from '../src/swtpm/capabilities.js';
import { type Confinement, hostConfinement, swtpmSocketArgs } from '../src/swtpm/instance.js';
import { handOver, KEY_FD } from '../src/swtpm/run-program.js';
import { socketAccepts } from '../src/swtpm/tpm-socket.js';
import { DEFAULT_RETENTION } from '../src/vault/retention.js';

export const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

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

/** `vtpm serve` as its own process (by default pool off, warnings only): /proc figures are the service's alone. */
export async function serveAsProcess(
  dataDir: string,
  settings: { logLevel?: string; poolSize?: number } = {},
): Promise<{ child: ChildProcess; url: string; token: string }> {
  const { logLevel = 'warn', poolSize = 0 } = settings;
  const child = spawn(
    process.execPath,
    [
      CLI,
      'serve',
      '--data-dir',
      dataDir,
      '--listen',
      '127.0.0.1:0',
      '--log-level',
      logLevel,
      '--pool-size',
      `${poolSize}`,
    ],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
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

let confinement: Promise<{ user: SystemUser | undefined; confinement: Confinement }> | undefined;

/** How the product's agent confines swtpm on this machine (its user when the service is root, seccomp). */
function productConfinement() {
  confinement ??= Promise.all([swtpmUserFor(undefined), probeCapabilities()]).then(([user, capabilities]) => ({
    user,
    confinement: hostConfinement(user, capabilities),
  }));
  return confinement;
}

/**
 * The anchor every start and data-path figure is compared with: swtpm started
 * directly, as libvirt would, with the very arguments the product's agent
 * launches it with (swtpmSocketArgs: TPM 2.0, state encrypted with a key on
 * fd 3, a pid file, --terminate, its unprivileged user, seccomp), in a
 * directory that user owns, on a fresh state.
 */
export async function startSwtpmDirectly(dir: string): Promise<DirectSwtpm> {
  const { user, confinement } = await productConfinement();
  await mkdir(dir, { recursive: true, mode: 0o700 });
  if (user) await chown(dir, user.uid, user.gid);
  const socket = join(dir, 'ctrl.sock');
  await rm(socket, { force: true });
  const args = swtpmSocketArgs(
    { version: '2.0', model: 'tpm-crb' },
    { stateDir: dir, socket, pidFile: join(dir, 'swtpm.pid') },
    confinement,
  );
  const started = performance.now();
  const child = spawn('swtpm', args, { stdio: ['ignore', 'ignore', 'ignore', 'pipe'] });
  handOver(child, KEY_FD, randomBytes(32).toString('hex'));
  while (!(await socketAccepts(socket))) {
    if (child.exitCode !== null) throw new Error(`swtpm exited with status ${child.exitCode}`);
    await delay(1);
  }
  return { socket, startMs: performance.now() - started, kill: () => child.kill('SIGKILL') };
}
