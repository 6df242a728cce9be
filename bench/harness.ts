/** What the benchmarks share: an in-process `vtpm serve`, a minimal API client, a socket probe. */
import { readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import pino from 'pino';
import { startServer, type RunningServer } from '../src/control/server.js';

export type Api = (method: string, path: string, body?: unknown) => Promise<unknown>;

export function apiClient(url: string, token: string): Api {
  return async (method, path, body) => {
    const response = await fetch(`${url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
    return response.status === 204 ? undefined : response.json();
  };
}

/** `vtpm serve` in this process, on `dataDir`, logging warnings only. */
export async function serveInProcess(dataDir: string, poolSize: number): Promise<{ server: RunningServer; api: Api }> {
  const server = await startServer({
    dataDir, listen: '127.0.0.1:0', runDir: join(dataDir, 'run'), scratchDir: '/dev/shm', keyManager: 'local', retention: 20, poolSize,
    logger: pino({ level: 'warn' }, pino.destination(2)), version: 'bench',
  });
  return { server, api: apiClient(server.url, (await readFile(server.adminTokenPath, 'utf8')).trim()) };
}

export function socketAccepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once('connect', () => (socket.end(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
}

export async function inBatches<T>(items: T[], width: number, work: (item: T) => Promise<void>, label?: string): Promise<void> {
  for (let i = 0; i < items.length; i += width) {
    await Promise.all(items.slice(i, i + width).map(work));
    if (label && (i / width) % 50 === 0) process.stderr.write(`${label}: ${Math.min(i + width, items.length)}/${items.length}\n`);
  }
}
