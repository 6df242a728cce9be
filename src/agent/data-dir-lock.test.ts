import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { lockDataDir } from './data-dir-lock.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vtpm-lock-'));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

describe('lockDataDir', () => {
  it('refuses a second holder, naming the first, until the first releases it', async () => {
    const first = await lockDataDir(dir, 'vtpm serve');
    await assert.rejects(lockDataDir(dir, 'vtpm agent'), {
      code: 'host_setup',
      message: new RegExp(`in use by another process \\(vtpm serve, pid ${process.pid}\\)`),
    });
    assert.equal((await stat(join(dir, 'process.lock'))).mode & 0o777, 0o600);
    first.release();
    const second = await lockDataDir(dir, 'vtpm agent');
    second.release();
  });

  it('a holder killed with SIGKILL leaves no stale lock', async () => {
    const lockModule = new URL('./data-dir-lock.js', import.meta.url).href;
    const holder = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `const { lockDataDir } = await import(${JSON.stringify(lockModule)});
         await lockDataDir(${JSON.stringify(dir)}, 'holder');
         process.stdout.write('held\\n');
         setInterval(() => {}, 1000);`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await new Promise<void>((resolve) => holder.stdout.once('data', () => resolve()));
    await assert.rejects(lockDataDir(dir, 'vtpm serve'), { code: 'host_setup', message: /holder, pid/ });
    const exited = new Promise((resolve) => holder.once('exit', resolve));
    holder.kill('SIGKILL');
    await exited;
    (await lockDataDir(dir, 'vtpm serve')).release();
  });
});
