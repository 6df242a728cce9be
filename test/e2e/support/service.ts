/**
 * The product as a user runs it: `vtpm serve` as a separate process on a
 * data directory of the test's own, and the `vtpm` CLI against it.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import { bootGuest, type GuestReport } from './guest.js';

export const CLI = fileURLToPath(new URL('../../../src/cli/main.js', import.meta.url));

/** Short paths: swtpm's unix sockets live under the data directory. */
/** A fresh directory that swtpm, running as its unprivileged user, may pass through (not list). */
export async function temporaryDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join('/tmp', `${prefix}-`));
  await chmod(dir, 0o711);
  return dir;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class ServiceUnderTest {
  private constructor(
    readonly dataDir: string,
    readonly url: string,
    private readonly process: ChildProcess,
    readonly serveArgs: string[],
    private readonly output: { text: string },
  ) {}

  /** Everything the service wrote to stdout and stderr so far (its logs). */
  get log(): string {
    return this.output.text;
  }

  /** `serveArgs` default to an empty provisioning pool, so that every create manufactures inline. */
  static async start(dataDir: string, serveArgs: string[] = ['--pool-size', '0']): Promise<ServiceUnderTest> {
    const child = spawn(
      process.execPath,
      [CLI, 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--log-level', 'warn', ...serveArgs],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const captured = { text: '' };
    child.stderr!.on('data', (chunk: Buffer) => (captured.text += chunk.toString()));
    const url = await new Promise<string>((resolve, reject) => {
      let stdout = '';
      child.stdout!.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
        captured.text += chunk.toString();
        const match = /listening on (https?:\/\/\S+)/.exec(stdout);
        if (match?.[1]) resolve(match[1]);
      });
      child.once('exit', (code) =>
        reject(new Error(`vtpm serve exited with ${code} before listening:\n${captured.text}`)),
      );
      setTimeout(() => reject(new Error(`vtpm serve did not listen within 60 s:\n${captured.text}`)), 60_000).unref();
    });
    return new ServiceUnderTest(dataDir, url, child, serveArgs, captured);
  }

  async stop(): Promise<void> {
    if (this.process.exitCode !== null) return;
    const exited = new Promise((resolve) => this.process.once('exit', resolve));
    this.process.kill('SIGTERM');
    await exited;
  }

  cli(...args: string[]): Promise<CliResult> {
    return this.run(undefined, args);
  }

  /** Runs a command with another user's token, handed over in VTPM_TOKEN (never on the command line). */
  cliAs(token: string, ...args: string[]): Promise<CliResult> {
    return this.run(token, args);
  }

  private run(token: string | undefined, args: string[]): Promise<CliResult> {
    return new Promise((resolve) => {
      const env: NodeJS.ProcessEnv = { ...process.env, VTPM_URL: this.url, VTPM_DATA_DIR: this.dataDir };
      delete env.VTPM_TOKEN;
      if (token !== undefined) env.VTPM_TOKEN = token;
      execFile(process.execPath, [CLI, ...args], { env }, (error, stdout, stderr) => {
        resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
      });
    });
  }

  /** Runs a command with --json and returns the parsed document; fails the test on a non-zero exit. */
  async json<T>(...args: string[]): Promise<T> {
    return this.parsed<T>(await this.cli('--json', ...args), args);
  }

  /** `json` with another user's token, in VTPM_TOKEN. */
  async jsonAs<T>(token: string, ...args: string[]): Promise<T> {
    return this.parsed<T>(await this.cliAs(token, '--json', ...args), args);
  }

  private parsed<T>(result: CliResult, args: string[]): T {
    assert.equal(result.code, 0, `vtpm ${args.join(' ')} failed (${result.code}): ${result.stderr}`);
    return JSON.parse(result.stdout) as T;
  }

  /** Polls `vtpm show` until the status is reached; the deadline only bounds a hang. */
  async waitForStatus(vm: string, status: string, deadlineMs = 15_000): Promise<void> {
    const until = Date.now() + deadlineMs;
    let seen = '';
    while (Date.now() < until) {
      seen = (await this.json<{ status: string }>('show', vm)).status;
      if (seen === status) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.fail(`vTPM ${vm} stayed ${seen}, expected ${status}`);
  }
}

export interface VtpmJson {
  vm: string;
  version: string;
  model: string;
  host: string;
  status: string;
  socket: string | null;
}

export interface StartedJson extends VtpmJson {
  socket: string;
  qemu_args: string[];
  libvirt_xml: string;
}

/** The RSA modulus certified by the vTPM's EK certificate. */
export async function ekModulus(service: ServiceUnderTest, vm: string): Promise<Buffer> {
  const { certificates } = await service.json<{ certificates: Array<{ key_type: string; pem: string }> }>(
    'ek',
    vm,
    '--key-type',
    'rsa2048',
  );
  const certificate = new X509Certificate(certificates[0]!.pem);
  return Buffer.from(certificate.publicKey.export({ format: 'jwk' }).n!, 'base64url');
}

export interface FileService {
  readonly service: ServiceUnderTest;
  readonly workDir: string;
  /** Stops `vtpm serve` and starts it again on the same data directory, running `whileDown` in between. */
  restart(whileDown?: () => Promise<void>): Promise<void>;
}

/**
 * A `vtpm serve` on a fresh data directory for the tests of one file: started
 * before them (with `serveArgs`, or what that function prepares and returns),
 * then `setup` runs; afterwards every vTPM is deleted (its swtpm stopped) and
 * the directory removed.
 */
export function serviceForFile(
  prefix: string,
  setup?: (context: FileService) => Promise<void>,
  serveArgs?: string[] | (() => Promise<string[]>),
): FileService {
  let service: ServiceUnderTest | undefined;
  let workDir: string | undefined;
  // One hook does all of it: Node 20 does not wait for one root-level before() to finish before the next.
  before(async () => {
    workDir = await temporaryDir(prefix);
    service = await ServiceUnderTest.start(
      join(workDir, 'data'),
      typeof serveArgs === 'function' ? await serveArgs() : serveArgs,
    );
    await setup?.(context);
  });
  after(async () => {
    if (service) {
      for (const { vm } of await service.json<VtpmJson[]>('list')) await service.cli('delete', '--force', '--yes', vm);
      await service.stop();
    }
    if (workDir) await rm(workDir, { recursive: true, force: true });
  });
  const context: FileService = {
    get service() {
      assert.ok(service, 'the service starts in before()');
      return service;
    },
    get workDir() {
      assert.ok(workDir, 'the work directory is made in before()');
      return workDir;
    },
    async restart(whileDown) {
      assert.ok(service);
      await service.stop();
      await whileDown?.();
      service = await ServiceUnderTest.start(service.dataDir, service.serveArgs);
    },
  };
  return context;
}

/** Runs `vtpm serve` expecting it to refuse to start (no pool: nothing is manufactured first); returns what it said. */
export async function serveRefusal(dataDir: string, args: string[]): Promise<string> {
  const failed = await new Promise<{ stderr: string; killed: boolean } | undefined>((resolve) => {
    execFile(
      process.execPath,
      [CLI, 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--pool-size', '0', ...args],
      { timeout: 120_000 },
      (error, _stdout, stderr) => {
        resolve(error ? { stderr, killed: error.killed === true } : undefined);
      },
    );
  });
  assert.ok(failed && !failed.killed, 'vtpm serve refused to start');
  return failed.stderr;
}

/** Starts the vTPM, boots a guest on it with the `nv` command set, and waits for the vTPM to stop with the guest. */
export async function bootNvGuest(
  service: ServiceUnderTest,
  vm: string,
  guest: { kernel: string; initramfs: string },
): Promise<GuestReport> {
  const report = await bootGuest({
    ...guest,
    qemuArgs: (await service.json<StartedJson>('start', vm)).qemu_args,
    commandSet: 'nv',
  });
  await service.waitForStatus(vm, 'stopped');
  return report;
}
