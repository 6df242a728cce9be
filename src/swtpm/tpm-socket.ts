/** Unix-socket plumbing shared by everything that talks to swtpm: readiness probes and framed TPM commands. */
import { connect, type Socket } from 'node:net';
import { EmulatorError } from '../errors.js';
import type { SendCommand } from './tpm2-commands.js';

/**
 * True once something accepts connections on `path`; the probe closes at once (swtpm does not count it as a client).
 */
export function socketAccepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    // Kept for the socket's whole life: a reset after the connect must not become an unhandled error.
    probe.on('error', () => resolve(false));
  });
}

/**
 * Sends one TPM command at a time over a connected stream and resolves with
 * each whole response, framed by the size field of the response header.
 */
export function commandSender(socket: Socket): SendCommand {
  let buffered = Buffer.alloc(0);
  const waiting: Array<{ resolve: (response: Buffer) => void; reject: (error: Error) => void }> = [];
  const failAll = (error: Error) => {
    for (const waiter of waiting.splice(0)) waiter.reject(error);
  };
  socket.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 6 && buffered.length >= buffered.readUInt32BE(2)) {
      const size = buffered.readUInt32BE(2);
      waiting.shift()?.resolve(buffered.subarray(0, size));
      buffered = buffered.subarray(size);
    }
  });
  socket.on('error', (error) => failAll(new EmulatorError(`TPM connection failed: ${error.message}`)));
  socket.on('close', () => failAll(new EmulatorError('the TPM closed its connection')));
  return (command) =>
    new Promise((resolve, reject) => {
      waiting.push({ resolve, reject });
      socket.write(command);
    });
}

/** Connects to a swtpm data socket (`--server type=unixio`). */
export async function connectTpm(path: string): Promise<{ send: SendCommand; close: () => void }> {
  const socket = connect(path);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', (error) => reject(new EmulatorError(`cannot reach the TPM at ${path}: ${error.message}`)));
  });
  return { send: commandSender(socket), close: () => socket.destroy() };
}
