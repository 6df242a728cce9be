/**
 * Whatever the CLI's parser refuses is a usage error, exit code 2 as the
 * README's table says, with the parser's message: scripts tell it from an
 * unexpected failure (1). Help and --version are no error. A file an
 * argument names that cannot be read is invalid input too. Runs the real
 * `vtpm`; none of these reaches a server.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('./main.js', import.meta.url));

function vtpm(...args: string[]): Promise<{ code: number; stderr: string }> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('VTPM_')));
  const env = { ...base, VTPM_URL: 'http://127.0.0.1:9' };
  return new Promise((resolve) =>
    execFile(process.execPath, [CLI, ...args], { env }, (error, _stdout, stderr) =>
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stderr }),
    ),
  );
}

describe('usage errors', () => {
  it('exit 2 with the parser message, for every kind the parser refuses', async () => {
    const refused: Array<[string[], RegExp]> = [
      [['no-such-command'], /unknown command 'no-such-command'/],
      [['show'], /missing required argument 'vm'/],
      [['show', 'a', 'b'], /too many arguments/],
      [['list', '--no-such-option'], /unknown option '--no-such-option'/],
      [['create'], /required option '--vm <uuid>' not specified/],
      [['create', '--vm', 'x', '--version', '3.0'], /Allowed choices are 1.2, 2.0/],
      [['restore', 'x', '--generation', 'abc'], /--generation takes a whole number/],
      [['export', 'x', '--out'], /argument missing/],
      [['libvirt', 'no-such-subcommand'], /unknown command/],
      [['libvirt'], /Usage: vtpm libvirt/],
    ];
    for (const [args, message] of refused) {
      const result = await vtpm(...args);
      assert.equal(result.code, 2, `vtpm ${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, message);
    }
  });

  it('help and --version exit 0', async () => {
    for (const args of [['--help'], ['create', '--help'], ['libvirt', 'attach', '--help'], ['--version']])
      assert.equal((await vtpm(...args)).code, 0, args.join(' '));
  });
});

describe("vtpm serve's deployment name", () => {
  it('one a certificate cannot carry is exit 2 naming --ca-name, before anything starts', async () => {
    for (const name of ['quote " in it', '', 'x'.repeat(57), ' leading space', 'new\nline']) {
      const result = await vtpm('serve', '--data-dir', '/nonexistent/vtpm-never-made', '--ca-name', name);
      assert.equal(result.code, 2, `${JSON.stringify(name)}: ${result.stderr}`);
      assert.match(result.stderr, /^vtpm: --ca-name: expected up to 56 letters/);
    }
  });
});

describe('a missing token', () => {
  it('is exit 5 with a hint that names only what the CLI takes (--token-file, not the removed --token)', async () => {
    const result = await vtpm('list', '--data-dir', '/nonexistent');
    assert.equal(result.code, 5, result.stderr);
    assert.match(result.stderr, /--token-file/);
    assert.doesNotMatch(result.stderr, /--token[^-]/);
  });
});

describe('files that arguments name', () => {
  let dir: string | undefined;
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('missing, a directory or a device that never ends: exit 2 naming the argument, at once', async () => {
    dir = await mkdtemp(join(tmpdir(), 'vtpm-bad-arguments-'));
    const passphrase = join(dir, 'passphrase');
    await writeFile(passphrase, 'a long enough bundle passphrase\n');
    const missing = join(dir, 'missing');
    const refused: Array<[string[], RegExp]> = [
      [['import', missing, '--passphrase-file', passphrase], /^vtpm: file: expected a readable file holding a bundle/],
      [['import', dir, '--passphrase-file', passphrase], /^vtpm: file: expected a regular file/],
      [['import', '/dev/zero', '--passphrase-file', passphrase], /^vtpm: file: expected a regular file/],
      [['import', passphrase, '--passphrase-file', missing], /^vtpm: --passphrase-file: expected a readable file/],
      [['import', passphrase, '--passphrase-file', '/dev/zero'], /^vtpm: --passphrase-file: expected a regular file/],
      [
        ['export', 'x', '--out', join(dir, 'out'), '--passphrase-file', dir],
        /^vtpm: --passphrase-file: expected a regular/,
      ],
    ];
    for (const [args, message] of refused) {
      const result = await vtpm(...args);
      assert.equal(result.code, 2, `vtpm ${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, message);
    }
  });
});
