/**
 * The processes a fault scenario runs and kills: `vtpm serve` and `vtpm
 * agent` (children of this process, on data directories that outlive them,
 * each on a fixed port so that a restart is found where the other side
 * expects it), and the swtpm processes they run, found in /proc by the
 * vTPM's state directory on their command line.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ApiClient } from '../../src/api/client.js';
import { CLI } from '../e2e/support/service.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

const SERVE_ARGS = ['--pool-size', '0', '--retention', '1000000'];
/** An API call the service does not answer within this is a hang, not a slow answer. */
const API_TIMEOUT_MS = 30_000;

/** A product process that exited before it was ready: a refusal, with what it said. */
export class Refused extends Error {
  constructor(
    readonly what: string,
    readonly code: number,
    readonly output: string,
  ) {
    super(`${what} exited (${code}) before it was ready:\n${output.slice(-2000)}`);
  }
}

interface Spawned {
  child: ChildProcess;
  output: { text: string };
}

/** A child process of the product's CLI whose output is kept. */
class ProductProcess {
  protected constructor(private readonly spawned: Spawned) {}

  /** Resolves once its stdout matches `ready`. */
  protected static spawn(what: string, args: string[], ready: RegExp, timeoutMs: number): Promise<Spawned> {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = { text: '' };
    child.stderr!.on('data', (chunk: Buffer) => (output.text += chunk.toString()));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`${what} was not ready within ${timeoutMs} ms:\n${output.text.slice(-2000)}`));
      }, timeoutMs);
      child.stdout!.on('data', (chunk: Buffer) => {
        output.text += chunk.toString();
        if (ready.test(output.text)) {
          clearTimeout(timer);
          resolve({ child, output });
        }
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Refused(what, code ?? (signal ? 128 : -1), output.text));
      });
    });
  }

  get log(): string {
    return this.spawned.output.text;
  }

  get exited(): boolean {
    return this.spawned.child.exitCode !== null || this.spawned.child.signalCode !== null;
  }

  kill9(): Promise<void> {
    return this.signal('SIGKILL');
  }

  stop(): Promise<void> {
    return this.signal('SIGTERM');
  }

  private async signal(signal: NodeJS.Signals): Promise<void> {
    if (this.exited) return;
    const exited = new Promise((resolve) => this.spawned.child.once('exit', resolve));
    this.spawned.child.kill(signal);
    await exited;
  }
}

export class Serve extends ProductProcess {
  private constructor(
    spawned: Spawned,
    readonly dataDir: string,
    readonly url: string,
    private readonly client: ApiClient,
  ) {
    super(spawned);
  }

  /**
   * Starts `vtpm serve` on 127.0.0.1:`port` and resolves once it listens; rejects with Refused when it exits
   * first, or when it does not listen within `timeoutMs`.
   */
  static async start(dataDir: string, port: number, timeoutMs = 60_000): Promise<Serve> {
    const args = ['serve', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--log-level', 'warn'];
    const spawned = await ProductProcess.spawn('vtpm serve', [...args, ...SERVE_ARGS], /listening on http/, timeoutMs);
    const url = `http://127.0.0.1:${port}`;
    const client = await ApiClient.connect({ url, dataDir, timeoutMs: API_TIMEOUT_MS }).catch((error) => {
      spawned.child.kill('SIGKILL');
      throw error;
    });
    return new Serve(spawned, dataDir, url, client);
  }

  /** A call of the users' API with the admin token; fails on any error answer. */
  api<T>(method: string, path: string, body?: unknown): Promise<T> {
    return this.client.request<T>(method, `/v1${path}`, body);
  }

  /** The CLI, as an operator runs it on this host (the admin token from the data directory). */
  cli(...args: string[]): Promise<CliResult> {
    return new Promise((resolve) => {
      const env = { ...process.env, VTPM_URL: this.url, VTPM_DATA_DIR: this.dataDir };
      delete (env as NodeJS.ProcessEnv).VTPM_TOKEN;
      execFile(process.execPath, [CLI, ...args], { env, timeout: API_TIMEOUT_MS }, (error, stdout, stderr) => {
        resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
      });
    });
  }
}

export interface AgentSettings {
  name: string;
  dataDir: string;
  /** Where the agent listens; the control plane reaches it through a proxy. */
  port: number;
  /** The control plane as the agent sees it (a proxy). */
  controlPlane: string;
  tokenFile: string;
}

/** `vtpm agent` of a second host on this machine, with a data and run directory of its own. */
export class Agent extends ProductProcess {
  /** Registers the host (through `serve`), writes its token file and returns what `start` needs. */
  static async register(
    serve: Serve,
    settings: Omit<AgentSettings, 'tokenFile'>,
    agentUrl: string,
  ): Promise<AgentSettings> {
    const { token } = await serve.api<{ token: string }>('POST', '/hosts', { name: settings.name, url: agentUrl });
    await mkdir(settings.dataDir, { recursive: true, mode: 0o711 });
    const tokenFile = join(settings.dataDir, '..', `${settings.name}.token`);
    await writeFile(tokenFile, token, { mode: 0o600 });
    return { ...settings, tokenFile };
  }

  static async start(settings: AgentSettings, timeoutMs = 60_000): Promise<Agent> {
    const { name, dataDir, port, controlPlane, tokenFile } = settings;
    const args = ['agent', '--name', name, '--data-dir', dataDir, '--run-dir', join(dataDir, 'run')];
    args.push('--listen', `127.0.0.1:${port}`, '--control-plane', controlPlane, '--token-file', tokenFile);
    return new Agent(
      await ProductProcess.spawn('vtpm agent', [...args, '--log-level', 'warn'], /listening on/, timeoutMs),
    );
  }
}

export interface SwtpmProcess {
  pid: number;
  vm: string;
  /** The data directory whose state directory it serves: which host runs it. */
  dataDir: string;
}

/** Every live swtpm whose state directory lies under one of `dataDirs`/tpm, with the VM it serves. */
export async function swtpmProcesses(dataDirs: readonly string[]): Promise<SwtpmProcess[]> {
  const found: SwtpmProcess[] = [];
  const patterns = dataDirs.map((dataDir) => ({
    dataDir,
    pattern: new RegExp(`${escapeRegExp(join(dataDir, 'tpm'))}/([0-9a-f-]{36})`),
  }));
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    const argv = cmdline.split('\0');
    if (!argv[0]?.endsWith('swtpm')) continue;
    const status = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    if (/^\d+ \(.*\) Z/.test(status)) continue;
    for (const { dataDir, pattern } of patterns) {
      const match = pattern.exec(argv.join(' '));
      if (match?.[1]) found.push({ pid: Number(entry), vm: match[1], dataDir });
    }
  }
  return found;
}

export function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
