/**
 * A host-side TPM client that reaches swtpm the way QEMU's tpm-emulator
 * backend does: it connects to the control socket, initialises the TPM
 * (CMD_INIT), and hands swtpm one end of a fresh socket pair as its data
 * channel (CMD_SET_DATAFD, the descriptor passed with SCM_RIGHTS). TPM commands
 * then go over the other end, exactly the path a guest's commands take.
 *
 * Node's public `net` API cannot attach a descriptor to a write. Its libuv
 * pipe handle in IPC mode can (it is what child_process uses to pass sockets),
 * so this client uses that handle through `process.binding('pipe_wrap')`,
 * which Node keeps available for this kind of use. Benchmarks only: nothing in
 * the product depends on it.
 */
import { connect, createServer, Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { responseCode, tpm2, type SendCommand } from '../src/swtpm/tpm2-commands.js';
import { commandSender } from '../src/swtpm/tpm-socket.js';

interface PipeHandle {
  connect(request: object, path: string): number;
  writeLatin1String(request: object, data: string, sendHandle?: unknown): number;
  close(): void;
}
interface PipeBinding {
  Pipe: new (type: number) => PipeHandle;
  PipeConnectWrap: new () => { oncomplete?: (status: number) => void };
  constants: { IPC: number };
}
interface StreamBinding {
  WriteWrap: new () => { handle?: PipeHandle; oncomplete?: (status: number) => void; async?: boolean };
}
const binding = (process as unknown as { binding(name: string): unknown }).binding;
const { Pipe, PipeConnectWrap, constants } = binding('pipe_wrap') as PipeBinding;
const { WriteWrap } = binding('stream_wrap') as StreamBinding;

const CMD_INIT = 0x02;
const CMD_SET_DATAFD = 0x10;

/** Control-channel responses of the commands this client sends are 4 bytes: the result code. */
function controlResults(socket: Socket): () => Promise<number> {
  let buffered = Buffer.alloc(0);
  const waiting: Array<(result: number) => void> = [];
  socket.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 4) {
      waiting.shift()?.(buffered.readUInt32BE(0));
      buffered = buffered.subarray(4);
    }
  });
  return () => new Promise((resolve) => waiting.push(resolve));
}

export class TpmChannel {
  private constructor(
    private readonly control: Socket,
    private readonly data: Socket,
    readonly send: SendCommand,
  ) {}

  /** Connects to swtpm's control socket as QEMU would and starts the TPM (TPM2_Startup). */
  static async open(controlSocket: string): Promise<TpmChannel> {
    const handle = new Pipe(constants.IPC);
    await new Promise<void>((resolve, reject) => {
      const request = new PipeConnectWrap();
      request.oncomplete = (status) =>
        status < 0 ? reject(new Error(`connect ${controlSocket}: libuv error ${status}`)) : resolve();
      const status = handle.connect(request, controlSocket);
      if (status < 0) reject(new Error(`connect ${controlSocket}: libuv error ${status}`));
    });
    const control = new Socket({ handle, readable: true, writable: true } as ConstructorParameters<typeof Socket>[0]);
    const nextResult = controlResults(control);
    const init = Buffer.alloc(8);
    init.writeUInt32BE(CMD_INIT, 0);
    control.write(init);
    await expectControlSuccess(nextResult, 'CMD_INIT');

    const { ours, theirs } = await socketPair();
    const command = Buffer.alloc(4);
    command.writeUInt32BE(CMD_SET_DATAFD);
    await new Promise<void>((resolve, reject) => {
      const request = new WriteWrap();
      request.handle = handle;
      request.oncomplete = (status) =>
        status < 0 ? reject(new Error(`CMD_SET_DATAFD: libuv error ${status}`)) : resolve();
      const status = handle.writeLatin1String(
        request,
        command.toString('latin1'),
        (theirs as unknown as { _handle: unknown })._handle,
      );
      if (status < 0) reject(new Error(`CMD_SET_DATAFD: libuv error ${status}`));
      else if (!request.async) resolve();
    });
    await expectControlSuccess(nextResult, 'CMD_SET_DATAFD');
    theirs.destroy();

    const channel = new TpmChannel(control, ours, commandSender(ours));
    const startup = await channel.send(tpm2.startupClear);
    if (responseCode(startup) !== 0) throw new Error(`TPM2_Startup answered 0x${responseCode(startup).toString(16)}`);
    return channel;
  }

  /** Closing the control connection is what a QEMU exit looks like to swtpm (--terminate ends it). */
  close(): void {
    this.data.destroy();
    this.control.destroy();
  }
}

async function expectControlSuccess(nextResult: () => Promise<number>, name: string): Promise<void> {
  const result = await nextResult();
  if (result !== 0) throw new Error(`${name} answered ${result}`);
}

/** Two connected stream sockets; `theirs` is the end handed to swtpm. */
async function socketPair(): Promise<{ ours: Socket; theirs: Socket }> {
  const dir = await mkdtemp(join(tmpdir(), 'vtpm-pair-'));
  const path = join(dir, 's');
  const server = createServer();
  try {
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(path, resolve));
    const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
    const theirs = connect(path);
    await new Promise<void>((resolve, reject) => theirs.once('connect', resolve).once('error', reject));
    return { ours: await accepted, theirs };
  } finally {
    server.close();
    await rm(dir, { recursive: true, force: true });
  }
}
