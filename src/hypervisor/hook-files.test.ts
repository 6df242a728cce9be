import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
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

function runHook(path: string, args: string[], xml: string): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile('sh', [path, ...args], (error, _stdout, stderr) =>
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stderr }),
    );
    child.stdin!.end(xml);
  });
}

describe('the hook script', () => {
  const vtpmDomain = "<domain><name>web-1</name><tpm><source path='/var/lib/vtpm/run/x.sock'/></tpm></domain>";
  const plainDomain = '<domain><name>db-1</name></domain>';

  it('with vtpm-manager gone, fails only the start of a domain with a vtpm-manager socket, and says why', async () => {
    const path = join(root, 'gone-hook');
    await writeFile(path, hookScript(settings(HERE.url, { program: join(root, 'no-such-dir', 'vtpm-libvirt-hook') })));
    const failed = await runHook(path, ['web-1', 'prepare', 'begin', '-'], vtpmDomain);
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /vtpm-manager: cannot act for libvirt domain web-1: .* is gone .*uninstall-hook/);
    assert.equal((await runHook(path, ['web-1', 'release', 'end', '-'], vtpmDomain)).code, 0);
    assert.equal((await runHook(path, ['db-1', 'prepare', 'begin', '-'], plainDomain)).code, 0);
  });

  it('runs the installed program with its settings, and nothing for calls it does not act on', async () => {
    const bin = join(root, 'bin');
    await mkdir(bin, { recursive: true });
    const program = join(bin, 'vtpm-libvirt-hook');
    await writeFile(program, '#!/bin/sh\ncat >/dev/null\necho "$* $VTPM_HOOK_HOST $VTPM_TOKEN_FILE" >&2\nexit 3\n', {
      mode: 0o755,
    });
    const path = join(root, 'hook');
    await writeFile(path, hookScript(settings(HERE.url, { program })));
    const ran = await runHook(path, ['web-1', 'prepare', 'begin', '-'], vtpmDomain);
    assert.deepEqual(ran, { code: 3, stderr: 'web-1 prepare begin - host-a /var/lib/vtpm/libvirt-hook.token\n' });
    assert.deepEqual(await runHook(path, ['web-1', 'started', 'begin', '-'], vtpmDomain), { code: 0, stderr: '' });
  });
});
