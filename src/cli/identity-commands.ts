/** `vtpm user ...`, `vtpm token ...`, `vtpm keys rotate`, `vtpm events`, `vtpm audit verify`. */
import { InvalidArgumentError as CommanderArgumentError, Option, type Command } from 'commander';
import { IntegrityError } from '../errors.js';
import { ROLES } from '../auth/policy.js';
import { client, emit, withClientOptions } from './context.js';
import { table } from './output.js';

interface Issued {
  token: string;
  token_id: number;
  expires_at: string | null;
}

interface EventJson {
  seq: number;
  at: string;
  actor: string;
  operation: string;
  vm: string | null;
  result: string;
}

const UNITS: Record<string, number> = { s: 1 / 86_400, m: 1 / 1_440, h: 1 / 24, d: 1 };

/** 90d, 12h, 30m, 45s: in days, as the API takes it. */
function duration(value: string): number {
  const match = /^(\d+(?:\.\d+)?)([smhd])$/.exec(value);
  if (!match || Number(match[1]) <= 0)
    throw new CommanderArgumentError(`--expires-in takes a duration such as 90d, 12h, 30m or 45s, got "${value}"`);
  return Number(match[1]) * UNITS[match[2]!]!;
}

const collect = (value: string, previous: string[] = []) => [...previous, value];
const expiresOption = () =>
  new Option(
    '--expires-in <duration>',
    'the token stops working after this long: 90d, 12h, 30m, 45s (default: never)',
  ).argParser(duration);
const issuedText = (issued: Issued) =>
  `token ${issued.token}\n(shown once: store it now; id ${issued.token_id}, ` +
  `${issued.expires_at ? `expires ${issued.expires_at}` : 'does not expire'})`;

export function registerIdentityCommands(program: Command): void {
  const user = program.command('user').description('users: a project and roles each');

  withClientOptions(user.command('create'))
    .description('create a user and print its first token')
    .argument('<name>', 'user name')
    .requiredOption('--project <project>', 'the project whose vTPMs the user works with')
    .requiredOption('--role <role>', `${ROLES.join(', ')} (repeatable)`, collect)
    .addOption(expiresOption())
    .action(
      async (name: string, options: { project: string; role: string[]; expiresIn?: number }, command: Command) => {
        const created = await (await client(command)).request<Issued & { user: unknown }>('POST', '/v1/users', {
          name,
          project: options.project,
          roles: options.role,
          ...(options.expiresIn !== undefined && { expires_in_days: options.expiresIn }),
        });
        emit(command, created, () => issuedText(created));
      },
    );

  withClientOptions(user.command('list'))
    .description('users, their projects and roles')
    .action(async (_options: unknown, command: Command) => {
      const { users } = await (await client(command)).request<{
        users: Array<{ name: string; project: string; roles: string[]; created_at: string }>;
      }>('GET', '/v1/users');
      emit(command, users, () =>
        table(
          users.map((u) => ({ ...u, roles: u.roles.join(',') })),
          ['name', 'project', 'roles', 'created_at'],
        ),
      );
    });

  withClientOptions(user.command('delete'))
    .description('delete a user; its tokens stop working at once')
    .argument('<name>', 'user name')
    .action(async (name: string, _options: unknown, command: Command) => {
      await (await client(command)).request('DELETE', `/v1/users/${encodeURIComponent(name)}`);
      emit(command, { deleted: name }, () => `deleted user ${name}`);
    });

  const token = program.command('token').description("API tokens (stored hashed: a token's value is shown once)");

  withClientOptions(token.command('create'))
    .description('issue another token for a user')
    .argument('<user>', 'user name')
    .addOption(expiresOption())
    .action(async (name: string, options: { expiresIn?: number }, command: Command) => {
      const issued = await (await client(command)).request<Issued>(
        'POST',
        `/v1/users/${encodeURIComponent(name)}/tokens`,
        options.expiresIn === undefined ? {} : { expires_in_days: options.expiresIn },
      );
      emit(command, issued, () => issuedText(issued));
    });

  withClientOptions(token.command('list'))
    .description('tokens, never their values')
    .option('--user <name>', "only this user's")
    .action(async (options: { user?: string }, command: Command) => {
      const query = options.user === undefined ? '' : `?user=${encodeURIComponent(options.user)}`;
      const { tokens } = await (await client(command)).request<{
        tokens: Array<Record<string, string | number | null>>;
      }>('GET', `/v1/tokens${query}`);
      emit(command, tokens, () =>
        table(
          tokens.map((t) => Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v ?? '-']))),
          ['id', 'user', 'created_at', 'expires_at', 'revoked_at'],
        ),
      );
    });

  withClientOptions(token.command('revoke'))
    .description('revoke a token: it stops working at once')
    .argument('<id>', 'token id (vtpm token list)')
    .action(async (id: string, _options: unknown, command: Command) => {
      await (await client(command)).request('DELETE', `/v1/tokens/${encodeURIComponent(id)}`);
      emit(command, { revoked: Number(id) }, () => `revoked token ${id}`);
    });

  withClientOptions(program.command('events'))
    .description('the audit log, newest first: who did what to which VM, and every read of a secret')
    .option('--vm <uuid>', 'only events about this VM')
    .option('--limit <count>', 'at most this many', '100')
    .action(async (options: { vm?: string; limit: string }, command: Command) => {
      const query = new URLSearchParams({ limit: options.limit, ...(options.vm && { vm: options.vm }) });
      const { events } = await (await client(command)).request<{ events: EventJson[] }>(
        'GET',
        `/v1/events?${query.toString()}`,
      );
      emit(command, events, () =>
        table(
          events.map((e) => ({ ...e, vm: e.vm ?? '-' })),
          ['seq', 'at', 'actor', 'operation', 'vm', 'result'],
        ),
      );
    });

  const keys = program.command('keys').description("the key manager's keys");
  withClientOptions(keys.command('rotate'))
    .description(
      'a new key-encryption key; every vTPM secret is re-wrapped under it (values unchanged), ' +
        'then the old key is destroyed; an interrupted rotation finishes when the service starts again',
    )
    .action(async (_options: unknown, command: Command) => {
      const report = await (await client(command)).request<{
        kind: string;
        rewrapped: number;
        already_rewrapped: number;
      }>('POST', '/v1/keys/rotate');
      emit(
        command,
        report,
        () =>
          `${report.kind} key manager: new key-encryption key; ` +
          `${report.rewrapped} secrets re-wrapped under it, the old key destroyed`,
      );
    });

  const audit = program.command('audit').description('the audit log');
  withClientOptions(audit.command('verify'))
    .description("check the audit log's hash chain from its first entry")
    .action(async (_options: unknown, command: Command) => {
      const report = await (await client(command)).request<{
        ok: boolean;
        events: number;
        broken_at?: number;
        reason?: string;
      }>('GET', '/v1/audit/verify');
      if (!report.ok)
        throw new IntegrityError(
          `the audit log is broken at entry ${report.broken_at}: ${report.reason} ` +
            `(${report.events} entries before it check out)`,
          { broken_at: report.broken_at },
        );
      emit(command, report, () => `audit log intact: ${report.events} entries, each chained to the one before`);
    });
}
