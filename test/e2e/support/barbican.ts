/**
 * A real OpenStack Barbican (Debian's barbican-api) for the tests, without
 * Keystone: SQLite in the test's directory, the simple_crypto plugin with a fresh key-encryption key,
 * and the API without its Keystone middleware, so that the caller's project is
 * the X-Project-Id header. Served by Debian's own Python with wsgiref.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { freePort } from './net.js';

const exec = promisify(execFile);
const PYTHON = '/usr/bin/python3';

export class Barbican {
  private process: ChildProcess | undefined;

  private constructor(
    readonly url: string,
    private readonly script: string,
    private readonly environment: Record<string, string>,
  ) {}

  static async create(dir: string): Promise<Barbican> {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const database = `sqlite:///${join(dir, 'barbican.sqlite')}`;
    // Barbican reads /etc/barbican/barbican.conf and nothing else it is told of: its settings go in through
    // oslo.config's environment source (OS_<GROUP>__<OPTION>) instead, leaving the host's file alone.
    // The secret store defaults to store_crypto with simple_crypto, whose key-encryption key is set fresh here.
    const environment = {
      OS_DEFAULT__SQL_CONNECTION: database,
      OS_DATABASE__CONNECTION: database,
      OS_SIMPLE_CRYPTO_PLUGIN__KEK: randomBytes(32).toString('base64'),
    };
    await exec('/usr/bin/barbican-db-manage', ['--dburl', database, 'upgrade'], { timeout: 120_000 });
    const paste = join(dir, 'barbican-api-paste.ini');
    await writeFile(
      paste,
      (await readFile('/etc/barbican/barbican-api-paste.ini', 'utf8')).replace(
        /^\/v1: barbican-api-keystone$/m,
        '/v1: barbican_api',
      ),
    );
    const script = join(dir, 'serve.py');
    await writeFile(
      script,
      [
        'from paste import deploy',
        `app = deploy.loadapp('config:' + ${JSON.stringify(paste)})`,
        'from wsgiref.simple_server import make_server, WSGIRequestHandler',
        'class Quiet(WSGIRequestHandler):',
        '    def log_message(self, *args): pass',
        `make_server('127.0.0.1', ${port}, app, handler_class=Quiet).serve_forever()`,
        '',
      ].join('\n'),
    );
    const barbican = new Barbican(url, script, environment);
    await barbican.start();
    return barbican;
  }

  async start(): Promise<void> {
    this.process = spawn(PYTHON, [this.script], {
      env: { ...process.env, ...this.environment },
      stdio: ['ignore', 'ignore', 'pipe'],
      cwd: dirname(this.script),
    });
    let errors = '';
    this.process.stderr!.on('data', (chunk: Buffer) => (errors += chunk.toString()));
    const deadline = Date.now() + 60_000;
    while (
      !(await fetch(`${this.url}/`).then(
        () => true,
        () => false,
      ))
    ) {
      if (this.process.exitCode !== null || Date.now() > deadline)
        throw new Error(`barbican-api did not start:\n${errors.slice(-2000)}`);
      await delay(200);
    }
  }

  async stop(): Promise<void> {
    const child = this.process;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }

  /** The secrets a project holds: name and Barbican's reference (URL). */
  async secrets(project: string): Promise<Array<{ name: string; secret_ref: string }>> {
    const response = await fetch(`${this.url}/v1/secrets?limit=100`, {
      headers: { 'x-project-id': project, accept: 'application/json' },
    });
    return ((await response.json()) as { secrets: Array<{ name: string; secret_ref: string }> }).secrets;
  }

  async secretNames(project: string): Promise<string[]> {
    return (await this.secrets(project)).map((secret) => secret.name);
  }
}
