/**
 * Bad arguments for every command of the `vtpm` CLI (read from its own
 * help), against a real `vtpm serve`: input the parser must refuse (unknown
 * options, missing or extra arguments, values outside the choices, a
 * subcommand that does not exist) and well-formed calls with hostile values
 * (traversal, shell metacharacters, Unicode, bytes that are not UTF-8).
 * Never a stack trace, always a message, only the exit codes the README
 * documents, usage errors exit 2, and nothing the input names on disk.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { CLI } from '../e2e/support/service.js';
import { type CliCommand, type CommandOption, cliCommands } from './support/commands.js';
import { canaryPaths, listing } from './support/disk.js';
import { CANARY, hostileString } from './support/hostile.js';
import { startFuzzService } from './support/fuzz-service.js';
import { Counts, fuzz } from './support/settings.js';

/** The README's exit codes; 1 ("unexpected error") is never the answer to bad input, which is expected. */
const EXPECTED_EXITS = new Set([0, 2, 3, 4, 5, 6, 7, 8]);
const USAGE = 2;
const SPAWN_DEADLINE_MS = 20_000;
/**
 * Commands that, given input they accept, run a service or change the host outside the data
 * directory (libvirt's hooks directory): only input the parser refuses is given to them.
 */
const PARSE_ONLY = new Set(['serve', 'agent', 'libvirt install-hook', 'libvirt uninstall-hook']);
/** Option values that stay fixed: libvirt's in-memory test driver, never a real libvirtd of this machine. */
const PINNED: Record<string, string> = { '--connect': 'test:///default' };

const counts = new Counts();
const { workDir, dataDir, service, identities } = await startFuzzService('cli', counts);
const cwd = join(workDir, 'cwd');
await mkdir(cwd);
const passphraseFile = join(workDir, 'passphrase');
await writeFile(passphraseFile, 'a long enough bundle passphrase\n', { mode: 0o600 });
const commands = await cliCommands(CLI);
const before = await listing(workDir, [dataDir, cwd]);
const known = [...identities.known, dataDir, passphraseFile, '1.2', '2.0', 'all', '1', CANARY];

type Who = 'admin' | 'member' | 'nobody';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Bytes as a bash ANSI-C string: any byte but NUL reaches the program, none reaches a shell unquoted. */
const quoted = (bytes: Buffer) => `$'${[...bytes].map((b) => `\\x${b.toString(16).padStart(2, '0')}`).join('')}'`;

/**
 * Runs `vtpm ARGS` through bash, so that arguments may be bytes that are not UTF-8, as any process can
 * pass. The command line goes to bash on its standard input: escaped, a large argument would be over the
 * kernel's limit for one argument of bash itself.
 */
function vtpm(args: Buffer[], who: Who): Promise<Run> {
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: cwd,
    XDG_DATA_HOME: cwd,
    VTPM_URL: service.url,
    VTPM_DATA_DIR: who === 'nobody' ? join(cwd, 'no-data-dir') : dataDir,
    ...(who !== 'nobody' && { VTPM_TOKEN: who === 'admin' ? identities.admin.token : identities.member.token }),
  };
  const command = ['exec', quoted(Buffer.from(process.execPath)), quoted(Buffer.from(CLI)), ...args.map(quoted)];
  const started = performance.now();
  return new Promise((resolve) => {
    const child = spawn('bash', ['-s'], { cwd, env, stdio: ['pipe', 'pipe', 'pipe'] });
    child.stdin.end(`${command.join(' ')}\n`);
    const out = { stdout: '', stderr: '' };
    child.stdout.on('data', (chunk: Buffer) => (out.stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (out.stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), SPAWN_DEADLINE_MS);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, ...out, ms: performance.now() - started });
    });
  });
}

const name = (command: CliCommand) => command.path.join(' ') || '(vtpm)';

/** An argument as the kernel passes it: no NUL, and at most what one argument may hold (128 KiB). */
const text = (value: string) => Buffer.from(value.replaceAll('\u0000', '')).subarray(0, 100_000);
const hostileArg: fc.Arbitrary<Buffer> = fc.oneof(
  { arbitrary: hostileString(known).map(text), weight: 8 },
  // Not UTF-8 at all, as a file name or a locale may be.
  {
    arbitrary: fc.uint8Array({ minLength: 1, maxLength: 24 }).map((b) => Buffer.from(b.filter((x) => x !== 0))),
    weight: 1,
  },
  { arbitrary: fc.constant(Buffer.from([0x2e, 0x2e, 0x2f, 0xff, 0xfe])), weight: 1 },
);

/** A directory of the host's by default (libvirt's swtpm states, say): one of the test's instead, always. */
const pinnedValue = (option: CommandOption): string | undefined =>
  PINNED[option.long] ?? (option.default?.startsWith('/') ? join(cwd, option.long.slice(2)) : undefined);

function optionValue(option: CommandOption): fc.Arbitrary<Buffer[]> {
  const pinned = pinnedValue(option);
  if (pinned !== undefined) return fc.constant([text(option.long), text(pinned)]);
  if (option.value === 'none') return fc.constant([text(option.long)]);
  const value =
    option.long === '--out'
      ? // What the command is asked to write goes where the test looks, under its working directory.
        hostileString().map((v) =>
          text(join(cwd, `out-${v.replaceAll('/', '_').replaceAll(CANARY, 'c').slice(0, 60)}`)),
        )
      : option.choices.length > 0
        ? fc.oneof(
            { arbitrary: fc.constantFrom(...option.choices).map(text), weight: 4 },
            { arbitrary: hostileArg, weight: 1 },
          )
        : option.long === '--passphrase-file'
          ? fc.oneof(fc.constant(text(passphraseFile)), hostileArg)
          : hostileArg;
  // `--opt=value` too: a value that starts with "-" reaches the command only that way.
  return fc
    .tuple(value, fc.boolean())
    .map(([v, joined]) => (joined ? [Buffer.concat([text(`${option.long}=`), v])] : [text(option.long), v]));
}

/** Well-formed calls with hostile values: every declared argument, and most options. */
function hostileCall(command: CliCommand): fc.Arbitrary<Buffer[]> {
  const positional = command.args.map((arg) =>
    arg.required
      ? hostileArg.map((v) => [v])
      : fc.option(
          hostileArg.map((v) => [v]),
          { nil: [] as Buffer[] },
        ),
  );
  const options = command.options
    .filter((o) => o.long !== '--url' && o.long !== '--token')
    .map((o) => (pinnedValue(o) === undefined ? fc.option(optionValue(o), { freq: 2, nil: [] }) : optionValue(o)));
  return fc
    .tuple(fc.tuple(...positional), fc.tuple(...options))
    .map(([args, opts]) => [...command.path.map(text), ...opts.flat(), ...args.flat()]);
}

/** Calls the parser must refuse before the command runs. */
function refusedCall(command: CliCommand, subcommands: string[]): fc.Arbitrary<Buffer[]> {
  const path = command.path.map(text);
  const args = command.args.filter((a) => a.required).map(() => text('6f1c2a0e-9b7d-4c3e-8f21-0a1b2c3d4e5f'));
  const declared = new Set([...command.options.map((o) => o.long), '--help', '--version']);
  const unknownOption = fc
    .stringMatching(/^--[a-z][a-z-]{0,20}$/)
    .filter((o) => !declared.has(o))
    .map((o) => [...path, ...args, text(o)]);
  const variants: fc.Arbitrary<Buffer[]>[] = [
    unknownOption,
    fc.constant([...path, ...args, text('--token'), text('x')]),
  ];
  if (command.group) {
    variants.push(
      hostileString()
        .filter((s) => !s.startsWith('-') && !subcommands.includes(s) && !['help', ''].includes(s.trim()))
        .map((s) => [...path, text(s)]),
    );
  } else {
    if (!command.args.some((a) => a.variadic))
      variants.push(hostileArg.map((extra) => [...path, ...args, ...command.args.map(() => text('x')), extra]));
    if (args.length > 0) variants.push(fc.constant(path));
    for (const option of command.options.filter((o) => o.choices.length > 0))
      variants.push(
        hostileArg
          .filter((v) => !option.choices.includes(v.toString()))
          .map((v) => [...path, ...args, text(option.long), v]),
      );
    for (const option of command.options.filter((o) => o.value === 'required'))
      variants.push(fc.constant([...path, ...args, text(option.long)]));
  }
  return fc.oneof(...variants);
}

const STACK = /\n\s+at \S.*:\d+:\d+|node:internal|\b(TypeError|ReferenceError|RangeError|SyntaxError)\b/;

function problemOf(run: Run, usage: boolean): string | undefined {
  if (run.code === null) return `did not finish within ${SPAWN_DEADLINE_MS / 1000} s`;
  if (STACK.test(run.stderr)) return 'printed a stack trace';
  if (usage && run.code !== USAGE) return `a usage error exited ${run.code}, not ${USAGE}`;
  if (!EXPECTED_EXITS.has(run.code)) return `exited ${run.code}, which is not a documented answer to bad input`;
  // A help text explains too: commander prints one for a command of commands called without a subcommand.
  if (run.code !== 0 && !/^(vtpm: |error: |Usage: )\S/.test(run.stderr)) return 'failed without a message on stderr';
  return undefined;
}

async function check(args: Buffer[], who: Who, usage: boolean): Promise<void> {
  const run = await vtpm(args, who);
  counts.add('CLI runs');
  const problem = problemOf(run, usage);
  const shown = args.map((a) => JSON.stringify(a.toString())).join(' ');
  assert.equal(problem, undefined, `vtpm ${shown} as ${who}: ${problem}\n  exit ${run.code}, stderr: ${run.stderr}`);
  if (run.code === 0 && !usage) await identities.heal();
}

const who = fc.constantFrom<Who>('admin', 'admin', 'member', 'nobody');

describe('bad arguments for every CLI command', { concurrency: 3 }, () => {
  it('finds every command, the groups and their subcommands', () => {
    const names = commands.map(name);
    for (const expected of ['create', 'libvirt attach', 'host add', 'serve', 'help'])
      assert.ok(names.includes(expected), `${expected} in ${names.join(', ')}`);
  });

  for (const command of commands) {
    const subcommands = commands
      .filter((c) => c.path.length === command.path.length + 1 && name(c).startsWith(name(command)))
      .map((c) => c.path.at(-1)!);
    it(`${name(command)}: input the parser refuses is a usage error`, async () => {
      await fuzz(
        fc.asyncProperty(refusedCall(command, subcommands), who, (args, as) => check(args, as, true)),
        { runs: 2, shrink: false },
      );
      counts.add('CLI commands covered');
    });
    if (command.group || PARSE_ONLY.has(name(command))) continue;
    it(`${name(command)}: hostile values`, async () => {
      await fuzz(
        fc.asyncProperty(hostileCall(command), who, (args, as) => check(args, as, false)),
        { runs: 3, shrink: false },
      );
    });
  }
});

describe('after the CLI fuzz', () => {
  it('the service still answers, and no 5xx was logged', async () => {
    const response = await fetch(`${service.url}/healthz`, { signal: AbortSignal.timeout(5000) });
    assert.equal(response.status, 200);
    assert.doesNotMatch(service.log, /"level":"(error|fatal)"/);
  });

  it('wrote nothing outside the data and working directories, nothing named after the input', async () => {
    assert.deepEqual(await listing(workDir, [dataDir, cwd]), before);
    assert.deepEqual(await canaryPaths([tmpdir(), workDir, process.cwd()]), []);
  });
});
