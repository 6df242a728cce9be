/**
 * The CLI never takes an API token as an argument, which every local user's
 * `ps` shows: it reads it from --token-file (owner-only), VTPM_TOKEN or the
 * data directory's admin.token. Runs the real `vtpm` against a stand-in API.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('./main.js', import.meta.url));
const dir = await mkdtemp(join(tmpdir(), 'vtpm-token-file-test-'));
const seen: Array<string | undefined> = [];
const api = createServer((request, response) => {
  seen.push(request.headers.authorization);
  response.writeHead(200, { 'content-type': 'application/json' }).end('[]');
});
let url: string;

before(async () => {
  await new Promise<void>((resolve) => api.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
});
after(async () => {
  api.close();
  await rm(dir, { recursive: true, force: true });
});

function vtpm(env: Record<string, string>, ...args: string[]): Promise<{ code: number; stderr: string }> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('VTPM_')));
  return new Promise((resolve) =>
    execFile(
      process.execPath,
      [CLI, ...args],
      { env: { ...base, VTPM_URL: url, VTPM_DATA_DIR: join(dir, 'no-data-dir'), ...env } },
      (error, _stdout, stderr) => resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stderr }),
    ),
  );
}

describe('the API token on the command line', () => {
  it('--token is a usage error that names --token-file, and nothing is sent', async () => {
    for (const args of [
      ['list', '--token', 'vtpm_on-the-command-line'],
      ['--token', 'vtpm_on-the-command-line', 'list'],
    ]) {
      const before = seen.length;
      const result = await vtpm({}, ...args);
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, /--token-file/);
      assert.equal(seen.length, before);
    }
  });

  it('refuses a token file others can read, naming it', async () => {
    const file = join(dir, 'open.token');
    await writeFile(file, 'vtpm_open\n', { mode: 0o644 });
    const before = seen.length;
    const result = await vtpm({}, 'list', '--token-file', file);
    assert.equal(result.code, 2, result.stderr);
    assert.ok(result.stderr.includes(`--token-file: expected a file only its owner can read (chmod 600 ${file})`));
    assert.equal(seen.length, before);
  });

  it('sends the token of an owner-only --token-file, before VTPM_TOKEN', async () => {
    const file = join(dir, 'mine.token');
    await writeFile(file, 'vtpm_from-the-file\n', { mode: 0o600 });
    const result = await vtpm({ VTPM_TOKEN: 'vtpm_from-the-environment' }, 'list', '--json', '--token-file', file);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(seen.at(-1), 'Bearer vtpm_from-the-file');
  });

  it('sends VTPM_TOKEN without a token file', async () => {
    const result = await vtpm({ VTPM_TOKEN: 'vtpm_from-the-environment' }, 'list', '--json');
    assert.equal(result.code, 0, result.stderr);
    assert.equal(seen.at(-1), 'Bearer vtpm_from-the-environment');
  });
});
