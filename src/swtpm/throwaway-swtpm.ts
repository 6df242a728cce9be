/**
 * Short-lived swtpm processes on a copy of a state in a scratch directory:
 * for taking a state over (adopt.ts), checking that one loads
 * (state-check.ts), and reading or rewriting what a TPM holds in its NV
 * memory (adopt.ts, issue-ek-certificates.ts). None of them serves a guest.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { EmulatorError } from '../errors.js';
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';
import { handOver, runProgram, spawnSwtpm } from './run-program.js';
import { STATE_CIPHER, stateKeyMaterial } from './state-key.js';
import type { SendCommand } from './tpm2-commands.js';
import { connectTpm, socketAccepts } from './tpm-socket.js';

const READY_TIMEOUT_MS = 10_000;
const IOCTL_TIMEOUT_MS = 15_000;
const KEY_FD = 3;

export interface Swtpm {
  child: ChildProcess;
  control: string;
  exited: Promise<void>;
}

/** swtpm on `dir`, with key material handed over on pipes (fd number to content). */
export async function startSwtpm(
  spec: TpmSpec,
  dir: string,
  name: string,
  options: string[],
  pipes: Record<number, string | Buffer>,
): Promise<Swtpm> {
  const control = join(dir, `${name}.ctrl`);
  const { child, failure: failed } = spawnSwtpm(
    [
      'socket',
      ...(spec.version === '2.0' ? ['--tpm2'] : []),
      '--ctrl',
      `type=unixio,path=${control},mode=0600`,
      ...options,
    ],
    { logFile: join(dir, `${name}.log`), pipeFds: Object.keys(pipes).map(Number) },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  for (const [fd, content] of Object.entries(pipes)) handOver(child, Number(fd), content);
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (!(await socketAccepts(control))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      const log = await readFile(join(dir, `${name}.log`), 'utf8').catch(() => '');
      throw new EmulatorError(
        `swtpm (${name}) did not start: ${log.trim().split('\n').slice(-5).join(' ') || 'no output'}`,
      );
    }
    await Promise.race([delay(2), failed]);
  }
  return { child, control, exited };
}

export async function ioctl(swtpm: Swtpm, ...args: string[]): Promise<string> {
  return (await runProgram('swtpm_ioctl', ['--unix', swtpm.control, ...args], { timeoutMs: IOCTL_TIMEOUT_MS })).stdout;
}

export async function shutDown(swtpm: Swtpm): Promise<void> {
  await ioctl(swtpm, '-s').catch(() => swtpm.child.kill('SIGKILL'));
  await swtpm.exited;
}

export interface TpmServer {
  swtpm: Swtpm;
  send: SendCommand;
  close(): void;
}

/**
 * A started TPM (TPM2_Startup done by swtpm itself) on the encrypted state in `stateDir`, with a data socket
 * to send it commands; `running` collects it, so that the caller kills what a failure left.
 */
export async function startTpmServer(
  spec: TpmSpec,
  scratch: string,
  name: string,
  stateDir: string,
  stateKey: Buffer,
  running: Swtpm[],
): Promise<TpmServer> {
  const data = join(scratch, `${name}.data`);
  const swtpm = await startSwtpm(
    spec,
    scratch,
    name,
    [
      '--tpmstate',
      `dir=${stateDir},mode=0600`,
      '--server',
      `type=unixio,path=${data},mode=0600`,
      '--key',
      `fd=${KEY_FD},mode=${STATE_CIPHER},format=hex`,
      '--flags',
      'not-need-init,startup-clear',
    ],
    { [KEY_FD]: stateKeyMaterial(stateKey) },
  );
  running.push(swtpm);
  // swtpm opens its control socket before its data socket: the first accepting says nothing of the second.
  for (const deadline = Date.now() + READY_TIMEOUT_MS; !(await socketAccepts(data)); await delay(2)) {
    if (Date.now() > deadline) throw new EmulatorError(`swtpm (${name}) did not open ${data}`);
  }
  const tpm = await connectTpm(data);
  return { swtpm, ...tpm };
}

/**
 * Runs `work` in a fresh scratch directory under `scratchRoot` with a list it adds its swtpm processes to;
 * whatever way it ends, those still running are killed and the directory goes.
 */
export async function inScratch<T>(
  scratchRoot: string,
  prefix: string,
  work: (scratch: string, running: Swtpm[]) => Promise<T>,
): Promise<T> {
  const scratch = await mkdtemp(join(scratchRoot, prefix));
  const running: Swtpm[] = [];
  try {
    return await work(scratch, running);
  } finally {
    for (const swtpm of running) if (swtpm.child.exitCode === null) swtpm.child.kill('SIGKILL');
    await rm(scratch, { recursive: true, force: true });
  }
}
