/**
 * The processes a fault scenario kills: `vtpm serve` (a child of this
 * process, on a data directory that outlives it) and the swtpm processes it
 * runs, found in /proc by the vTPM's state directory on their command line.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CLI } from '../e2e/support/service.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

const SERVE_ARGS = ['--pool-size', '0', '--retention', '1000000'];

export class Serve {
  private exitCode: number | null = null;

  private constructor(
    readonly dataDir: string,
    readonly url: string,
    private readonly child: ChildProcess,
    private readonly output: { text: string },
  ) {
    child.once('exit', (code, signal) => (this.exitCode = code ?? (signal ? 128 : 1)));
  }

  get log(): string {
    return this.output.text;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get exited(): boolean {
    return this.exitCode !== null || this.child.exitCode !== null || this.child.signalCode !== null;
  }

  /**
   * Starts `vtpm serve` and resolves once it listens; rejects with its output when it exits first (a
   * refusal) or does not listen within `timeoutMs`.
   */
  static start(dataDir: string, timeoutMs = 60_000): Promise<Serve> {
    const child = spawn(
      process.execPath,
      [CLI, 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--log-level', 'warn', ...SERVE_ARGS],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const output = { text: '' };
    child.stderr!.on('data', (chunk: Buffer) => (output.text += chunk.toString()));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`vtpm serve did not listen within ${timeoutMs} ms:\n${output.text.slice(-2000)}`));
      }, timeoutMs);
      child.stdout!.on('data', (chunk: Buffer) => {
        output.text += chunk.toString();
        const match = /listening on (https?:\/\/\S+)/.exec(output.text);
        if (match?.[1]) {
          clearTimeout(timer);
          resolve(new Serve(dataDir, match[1], child, output));
        }
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new ServeRefused(code ?? -1, signal, output.text));
      });
    });
  }

  kill9(): Promise<void> {
    return this.signal('SIGKILL');
  }

  stop(): Promise<void> {
    return this.signal('SIGTERM');
  }

  private async signal(signal: NodeJS.Signals): Promise<void> {
    if (this.exited) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill(signal);
    await exited;
  }

  cli(...args: string[]): Promise<CliResult> {
    return new Promise((resolve) => {
      const env = { ...process.env, VTPM_URL: this.url, VTPM_DATA_DIR: this.dataDir };
      delete (env as NodeJS.ProcessEnv).VTPM_TOKEN;
      execFile(process.execPath, [CLI, ...args], { env, timeout: 60_000 }, (error, stdout, stderr) => {
        resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
      });
    });
  }

  async json<T>(...args: string[]): Promise<T> {
    const result = await this.cli('--json', ...args);
    if (result.code !== 0) throw new Error(`vtpm ${args.join(' ')} failed (${result.code}): ${result.stderr.trim()}`);
    return JSON.parse(result.stdout) as T;
  }
}

export class ServeRefused extends Error {
  constructor(
    readonly code: number,
    readonly signal: NodeJS.Signals | null,
    readonly output: string,
  ) {
    super(`vtpm serve exited (${code ?? signal}) before listening:\n${output.slice(-2000)}`);
  }
}

export interface SwtpmProcess {
  pid: number;
  vm: string;
}

/** Every live swtpm whose state directory lies under `dataDir`/tpm, with the VM it serves. */
export async function swtpmProcesses(dataDir: string): Promise<SwtpmProcess[]> {
  const found: SwtpmProcess[] = [];
  const stateRoot = join(dataDir, 'tpm');
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    const argv = cmdline.split('\0');
    if (!argv[0]?.endsWith('swtpm')) continue;
    const status = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    if (/^\d+ \(.*\) Z/.test(status)) continue;
    const match = new RegExp(`${escapeRegExp(stateRoot)}/([0-9a-f-]{36})`).exec(argv.join(' '));
    if (match?.[1]) found.push({ pid: Number(entry), vm: match[1] });
  }
  return found;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
