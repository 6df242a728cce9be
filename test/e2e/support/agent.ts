/**
 * A second host for the tests: `vtpm agent` as a process of its own, on a
 * data and run directory of its own, registered with the control plane
 * under test (`vtpm host add`) and reporting to it.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { freePort } from './net.js';
import { CLI, type ServiceUnderTest } from './service.js';

export class AgentUnderTest {
  private constructor(
    readonly name: string,
    readonly dataDir: string,
    readonly runDir: string,
    /** Where the agent serves the control plane's calls. */
    readonly url: string,
    private readonly process: ChildProcess,
    private readonly output: { text: string },
  ) {}

  get log(): string {
    return this.output.text;
  }

  /**
   * Registers host `name` with the control plane and starts its agent; resolves once the control
   * plane lists the host with its traits. `wrap` runs the agent inside another command (nsenter).
   */
  static async start(
    service: ServiceUnderTest,
    dir: string,
    name: string,
    options: {
      runDir?: string;
      wrap?: string[];
      extraArgs?: string[];
      https?: boolean;
      env?: NodeJS.ProcessEnv;
      untilReportedIn?: boolean;
    } = {},
  ): Promise<AgentUnderTest> {
    const port = await freePort();
    const { token } = await service.json<{ token: string }>(
      'host',
      'add',
      name,
      '--agent-url',
      `${options.https ? 'https' : 'http'}://127.0.0.1:${port}`,
    );
    const dataDir = join(dir, 'data');
    await mkdir(dataDir, { recursive: true, mode: 0o711 });
    const tokenFile = join(dir, 'agent.token');
    await writeFile(tokenFile, token, { mode: 0o600 });
    const runDir = options.runDir ?? join(dataDir, 'run');
    const args = [
      CLI,
      'agent',
      '--name',
      name,
      '--data-dir',
      dataDir,
      '--run-dir',
      runDir,
      '--listen',
      `127.0.0.1:${port}`,
      '--control-plane',
      service.url,
      '--token-file',
      tokenFile,
      '--log-level',
      'warn',
      ...(options.extraArgs ?? []),
    ];
    const [command, ...rest] = [...(options.wrap ?? []), process.execPath, ...args];
    const child = spawn(command!, rest, { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env });
    const output = { text: '' };
    child.stdout!.on('data', (chunk: Buffer) => (output.text += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (output.text += chunk.toString()));
    const url = `${options.https ? 'https' : 'http'}://127.0.0.1:${port}`;
    const agent = new AgentUnderTest(name, dataDir, runDir, url, child, output);
    if (options.untilReportedIn === false) return agent;
    const deadline = Date.now() + 60_000;
    for (;;) {
      const hosts = await service.json<Array<{ name: string; traits: string[] }>>('hosts');
      if (hosts.find((h) => h.name === name)?.traits.includes('COMPUTE_SECURITY_TPM_2_0')) return agent;
      assert.ok(child.exitCode === null, `vtpm agent exited: ${output.text}`);
      assert.ok(Date.now() < deadline, `host ${name} did not report in within 60 s: ${output.text}`);
      await delay(200);
    }
  }

  /** The host drops off the network as far as the control plane can tell: its agent freezes, its swtpms run on. */
  freeze(): void {
    this.process.kill('SIGSTOP');
  }

  thaw(): void {
    this.process.kill('SIGCONT');
  }

  async stop(): Promise<void> {
    if (this.process.exitCode !== null) return;
    const exited = new Promise((resolve) => this.process.once('exit', resolve));
    this.process.kill('SIGTERM');
    await exited;
  }
}
