import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { NotFoundError, StateConflictError } from '../errors.js';
import { installHookScript, uninstallHookScripts } from './hook-files.js';
import { hookOwner, hookScript, type HookSettings } from './libvirt-hook.js';

const root = await mkdtemp(join(tmpdir(), 'vtpm-hooks-'));
after(() => rm(root, { recursive: true, force: true }));

const settings = (url: string, extra: Partial<HookSettings> = {}): HookSettings => ({
  program: join(root, 'bin', 'vtpm-libvirt-hook'),
  nodeDir: '/usr/bin',
  url,
  dataDir: "/var/lib/vtpm-o'brien",
  socketDir: '/var/lib/vtpm/run',
  host: 'host-a',
  timeoutMs: 10_000,
  tokenFile: '/var/lib/vtpm/libvirt-hook.token',
  ...extra,
});
const HERE = { url: 'http://127.0.0.1:7390', dataDir: "/var/lib/vtpm-o'brien" };
const script = (url: string) => async () => hookScript(settings(url));
const FOREIGN = "#!/bin/sh\n# the site's own hook\nexit 0\n";

let count = 0;
async function hooksDir(files: Record<string, string> = {}): Promise<string> {
  count += 1;
  const dir = join(root, `hooks-${count}`);
  await mkdir(join(dir, 'qemu.d'), { recursive: true });
  for (const [name, content] of Object.entries(files)) await writeFile(join(dir, name), content, { mode: 0o755 });
  return dir;
}

describe('installing the qemu hook among others', () => {
  it("takes libvirt's own hook when it is free, and replaces its own, keeping a backup", async () => {
    const dir = await hooksDir();
    assert.deepEqual(await installHookScript(dir, HERE, false, script(HERE.url)), { path: join(dir, 'qemu') });
    assert.equal(((await stat(join(dir, 'qemu'))).mode & 0o777).toString(8), '755');
    const again = await installHookScript(dir, HERE, false, script(HERE.url));
    assert.equal(again.path, join(dir, 'qemu'));
    assert.equal(await readFile(again.backup!, 'utf8'), hookScript(settings(HERE.url)));
    assert.equal(((await stat(again.backup!)).mode & 0o777).toString(8), '600', 'a backup is never run');
  });

  it('goes to qemu.d beside a hook it did not write, which stays byte for byte', async () => {
    const dir = await hooksDir({ qemu: FOREIGN });
    const installed = await installHookScript(dir, HERE, false, script(HERE.url));
    assert.equal(installed.path, join(dir, 'qemu.d', 'vtpm-manager'));
    assert.equal(await readFile(join(dir, 'qemu'), 'utf8'), FOREIGN);
    // Installing again finds its own in qemu.d.
    assert.equal((await installHookScript(dir, HERE, false, script(HERE.url))).path, installed.path);
  });

  it("refuses another vtpm-manager deployment's hook, naming it; --replace keeps it as a backup", async () => {
    const other = hookScript(settings('https://cp-2:7390'));
    const dir = await hooksDir({ qemu: other });
    let made = false;
    await assert.rejects(
      installHookScript(dir, HERE, false, async () => {
        made = true;
        return '';
      }),
      (error: Error) =>
        error instanceof StateConflictError &&
        /another vtpm-manager deployment \(https:\/\/cp-2:7390/.test(error.message) &&
        /--replace/.test(error.message),
    );
    assert.equal(made, false, 'no token is issued for a refused install');
    assert.equal(await readFile(join(dir, 'qemu'), 'utf8'), other);
    const replaced = await installHookScript(dir, HERE, true, script(HERE.url));
    assert.equal(await readFile(replaced.backup!, 'utf8'), other);
  });

  it('removes only its own hook, and says whose the others are', async () => {
    const dir = await hooksDir({ qemu: FOREIGN });
    await installHookScript(dir, HERE, false, script(HERE.url));
    const removed = await uninstallHookScripts(dir, HERE);
    assert.deepEqual(removed, {
      removed: [join(dir, 'qemu.d', 'vtpm-manager')],
      tokenFiles: ['/var/lib/vtpm/libvirt-hook.token'],
      leftAlone: [join(dir, 'qemu')],
    });
    assert.equal(await readFile(join(dir, 'qemu'), 'utf8'), FOREIGN);
    await assert.rejects(
      uninstallHookScripts(dir, HERE),
      (error: Error) =>
        error instanceof NotFoundError && /a hook vtpm-manager did not write: left alone/.test(error.message),
    );
  });

  it('reads back whose a hook is, quotes and all', () => {
    assert.deepEqual(hookOwner(hookScript(settings(HERE.url))), {
      ...HERE,
      tokenFile: '/var/lib/vtpm/libvirt-hook.token',
    });
    assert.equal(hookOwner(FOREIGN), undefined);
  });
});
