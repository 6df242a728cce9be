/**
 * Runs swtpm's tools with the state key handed over on file descriptor 3
 * through a pipe, so that the key never touches a file or a command line.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { EmulatorError, HostSetupError } from '../errors.js';

export const KEY_FD = 3;

/**
 * The environment of every program the product runs: the service's own,
 * without any of vtpm-manager's variables (`VTPM_TOKEN`, `VTPM_PKCS11_PIN`,
 * `VTPM_BUNDLE_PASSPHRASE`, ...), which none of those programs reads and a
 * long-lived, guest-facing swtpm must not hold. PATH, locale, HOME and the
 * programs' own variables pass; `extra` adds what one run needs.
 */
export function childEnvironment(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env))
    if (!name.toUpperCase().startsWith('VTPM_') && value !== undefined) env[name] = value;
  return { ...env, ...extra };
}

export interface ProgramResult {
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  env?: Record<string, string>;
  /** Written to fd 3, then the pipe is closed. */
  keyMaterial?: string;
  /** Written to standard input, for programs that read secrets from there. */
  stdin?: string;
  timeoutMs?: number;
  /** Run under `nice -n 19`; its children (swtpm, swtpm_localca) inherit it. */
  lowPriority?: boolean;
}

/**
 * Writes `content` to one of the child's pipes and closes it. A reset or EPIPE
 * there means the program exited or dropped the pipe before reading; its exit
 * says why, so the pipe's own error is not reported twice.
 */
export function handOver(child: ChildProcess, fd: number, content: string | Buffer): void {
  const pipe = child.stdio[fd] as NodeJS.WritableStream;
  (pipe as unknown as NodeJS.EventEmitter).on('error', () => undefined);
  pipe.end(content);
}

interface SpawnedSwtpm {
  child: ChildProcess;
  /** Rejects when swtpm could not be started at all (not installed, say); handled, so it may go unawaited. */
  failure: Promise<never>;
}

/**
 * Starts `swtpm` with its standard output and error appended to `logFile`,
 * a pipe on each of `pipeFds` (for keys and passphrases) and nothing else.
 */
export function spawnSwtpm(args: string[], options: { logFile: string; pipeFds: number[]; detached?: boolean }) {
  const logFd = openSync(options.logFile, 'a', 0o600);
  const highestFd = Math.max(2, ...options.pipeFds);
  const stdio = Array.from({ length: highestFd + 1 }, (_, fd) =>
    fd === 0 ? 'ignore' : fd <= 2 ? logFd : options.pipeFds.includes(fd) ? 'pipe' : 'ignore',
  ) as Array<'ignore' | 'pipe' | number>;
  let child: ChildProcess;
  try {
    child = spawn('swtpm', args, { stdio, env: childEnvironment(), detached: options.detached ?? false });
  } finally {
    closeSync(logFd);
  }
  const failure = new Promise<never>((_, reject) =>
    child.once('error', (error: NodeJS.ErrnoException) =>
      reject(
        error.code === 'ENOENT'
          ? new HostSetupError(
              "swtpm is not installed on this host; run the README's setup command (Debian package swtpm)",
            )
          : new EmulatorError(`swtpm could not be started: ${error.message}`),
      ),
    ),
  );
  failure.catch(() => undefined);
  return { child, failure } satisfies SpawnedSwtpm;
}

const tail = (text: string, lines = 15): string => text.trim().split('\n').slice(-lines).join('\n');

export function runProgram(program: string, args: string[], options: RunOptions = {}): Promise<ProgramResult> {
  return new Promise((resolve, reject) => {
    const [command, commandArgs] = options.lowPriority ? ['nice', ['-n', '19', program, ...args]] : [program, args];
    const child = spawn(command, commandArgs, {
      env: childEnvironment(options.env),
      stdio: [
        options.stdin === undefined ? 'ignore' : 'pipe',
        'pipe',
        'pipe',
        options.keyMaterial === undefined ? 'ignore' : 'pipe',
      ],
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.on('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        error.code === 'ENOENT'
          ? new HostSetupError(
              `${program} is not installed on this host; ` +
                "run the README's setup command (Debian packages swtpm and swtpm-tools)",
              { program },
            )
          : new EmulatorError(`${program} could not be started: ${error.message}`, { program }),
      );
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve({ stdout, stderr });
      else {
        const how = signal ? `was killed by ${signal}` : `exited with status ${code}`;
        reject(
          new EmulatorError(`${program} ${how}: ${tail(stderr + stdout) || 'no output'}`, {
            program,
            status: code,
            signal,
          }),
        );
      }
    });
    if (options.stdin !== undefined) handOver(child, 0, options.stdin);
    if (options.keyMaterial !== undefined) handOver(child, KEY_FD, options.keyMaterial);
  });
}
