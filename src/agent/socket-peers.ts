/**
 * Whether anything is connected to a unix socket a process here listens on:
 * the kernel lists, per network namespace, every unix socket with the path
 * it was bound to; an accepted connection carries its listener's path, in
 * the connected state.
 */
import { readFile } from 'node:fs/promises';

const CONNECTED = '03';

export async function hasConnectedPeer(path: string): Promise<boolean> {
  const table = await readFile('/proc/net/unix', 'utf8');
  return table.split('\n').some((line) => {
    const fields = line.trim().split(/\s+/);
    return fields[5] === CONNECTED && fields[7] === path;
  });
}
