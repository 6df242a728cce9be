/**
 * Real PostgreSQL servers for the tests (Debian's postgresql package, which
 * the test setup installs): a throwaway cluster in a directory of its own, on
 * a free port on 127.0.0.1 and a Unix socket in that directory, trusting
 * local connections. A standby made from a primary streams from it
 * synchronously, so that a commit is acknowledged only once both have it.
 * Run as root, the server runs as the postgres user, as PostgreSQL insists.
 */
import { execFile } from 'node:child_process';
import { appendFile, chown, mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import pg from 'pg';

const exec = promisify(execFile);
const POSTGRES_USER = 'postgres';

async function binaries(): Promise<string> {
  const versions = (await readdir('/usr/lib/postgresql')).filter((v) => /^[0-9]+$/.test(v)).sort((a, b) => +b - +a);
  if (versions.length === 0) throw new Error('PostgreSQL is not installed (apt-get install postgresql)');
  return `/usr/lib/postgresql/${versions[0]}/bin`;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Runs a PostgreSQL program as the postgres user when this process is root. */
async function runAsPostgres(program: string, args: string[]): Promise<string> {
  const asRoot = process.getuid?.() === 0;
  const [command, argv] = asRoot ? ['runuser', ['-u', POSTGRES_USER, '--', program, ...args]] : [program, args];
  const { stdout } = await exec(command, argv, { timeout: 120_000 });
  return stdout;
}

async function ownedByPostgres(dir: string): Promise<void> {
  if (process.getuid?.() !== 0) return;
  const { stdout } = await exec('id', ['-u', POSTGRES_USER]);
  const uid = Number(stdout.trim());
  await chown(dir, uid, uid);
}

export class PostgresServer {
  private constructor(
    readonly dataDir: string,
    readonly port: number,
    private readonly bin: string,
    private readonly root: string,
  ) {}

  /** A new primary; `standbyName` makes its commits wait for the standby of that name. */
  static async start(options: { standbyName?: string } = {}): Promise<PostgresServer> {
    const bin = await binaries();
    const root = await mkdtemp(join(tmpdir(), 'vtpm-pg-'));
    await ownedByPostgres(root);
    const dataDir = join(root, 'data');
    await runAsPostgres(join(bin, 'initdb'), [
      '-D',
      dataDir,
      '-A',
      'trust',
      '-U',
      POSTGRES_USER,
      '--locale=C',
      '-E',
      'UTF8',
    ]);
    const port = await freePort();
    const settings = [
      `port = ${port}`,
      "listen_addresses = '127.0.0.1'",
      `unix_socket_directories = '${root}'`,
      'wal_level = replica',
      'max_connections = 200',
      ...(options.standbyName
        ? [`synchronous_standby_names = '${options.standbyName}'`, 'synchronous_commit = on']
        : []),
    ];
    await appendFile(join(dataDir, 'postgresql.conf'), `\n${settings.join('\n')}\n`);
    await appendFile(join(dataDir, 'pg_hba.conf'), '\nhost replication postgres 127.0.0.1/32 trust\n');
    const server = new PostgresServer(dataDir, port, bin, root);
    await server.startAgain();
    return server;
  }

  /** A synchronous standby of this primary, named `name`, streaming from it; returns once it is synchronous. */
  async standby(name: string): Promise<PostgresServer> {
    const root = await mkdtemp(join(tmpdir(), 'vtpm-pg-standby-'));
    await ownedByPostgres(root);
    const dataDir = join(root, 'data');
    await runAsPostgres(join(this.bin, 'pg_basebackup'), [
      ...['-h', '127.0.0.1', '-p', String(this.port), '-U', POSTGRES_USER, '-D', dataDir, '-R', '-X', 'stream'],
    ]);
    const port = await freePort();
    await appendFile(
      join(dataDir, 'postgresql.conf'),
      `\nport = ${port}\nunix_socket_directories = '${root}'\nsynchronous_standby_names = ''\n`,
    );
    await appendFile(
      join(dataDir, 'postgresql.auto.conf'),
      `\nprimary_conninfo = 'host=127.0.0.1 port=${this.port} user=${POSTGRES_USER} application_name=${name}'\n`,
    );
    const standby = new PostgresServer(dataDir, port, this.bin, root);
    await standby.startAgain();
    // It streams at once but counts as synchronous only once it has caught up.
    for (let waited = 0; waited < 30_000; waited += 200) {
      const rows = await this.query<{ sync_state: string }>(
        'postgres',
        `SELECT sync_state FROM pg_stat_replication WHERE application_name = '${name}'`,
      );
      if (rows[0]?.sync_state === 'sync') return standby;
      await delay(200);
    }
    throw new Error(`the standby ${name} did not become synchronous within 30 s`);
  }

  /** postgresql:// for `database` (default postgres) on this server. */
  uri(database = 'postgres'): string {
    return `postgresql://${POSTGRES_USER}@127.0.0.1:${this.port}/${database}`;
  }

  /** A new, empty database; returns its name. */
  async createDatabase(): Promise<string> {
    const name = `vtpm_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;
    const client = new pg.Client({ connectionString: this.uri() });
    await client.connect();
    try {
      await client.query(`CREATE DATABASE ${name}`);
    } finally {
      await client.end();
    }
    return name;
  }

  /** Runs one statement on this server, as the postgres user. */
  async query<R extends pg.QueryResultRow>(database: string, text: string): Promise<R[]> {
    const client = new pg.Client({ connectionString: this.uri(database) });
    await client.connect();
    try {
      return (await client.query<R>(text)).rows;
    } finally {
      await client.end();
    }
  }

  async startAgain(): Promise<void> {
    await runAsPostgres(join(this.bin, 'pg_ctl'), [
      '-D',
      this.dataDir,
      '-l',
      join(this.root, 'server.log'),
      '-w',
      'start',
    ]);
  }

  /** Stops the server as a crash would (immediate shutdown: no checkpoint, clients cut off). */
  async kill(): Promise<void> {
    await runAsPostgres(join(this.bin, 'pg_ctl'), ['-D', this.dataDir, '-m', 'immediate', '-w', 'stop']);
  }

  /** A standby becomes a primary that takes writes. */
  async promote(): Promise<void> {
    await runAsPostgres(join(this.bin, 'pg_ctl'), ['-D', this.dataDir, '-w', 'promote']);
  }

  /** Stops the server if it runs and removes its directory. */
  async destroy(): Promise<void> {
    await runAsPostgres(join(this.bin, 'pg_ctl'), ['-D', this.dataDir, '-m', 'immediate', '-w', 'stop']).catch(
      () => {},
    );
    await rm(this.root, { recursive: true, force: true });
  }
}
