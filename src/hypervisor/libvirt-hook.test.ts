import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, beforeEach, describe, it } from 'node:test';
import { hookScript, type HookSettings } from './libvirt-hook.js';
import { libvirtTpmXml } from './libvirt.js';

const root = await mkdtemp(join(tmpdir(), 'vtpm-hook-script-'));
after(() => rm(root, { recursive: true, force: true }));

const UUID = '6f1c2a9e-3b1d-4c55-9d5e-0a6b7c8d9e10';
const SOCKET_DIR = '/var/lib/vtpm/run';
const CALLS = join(root, 'calls');
const STDIN = join(root, 'stdin');
const PROGRAM = join(root, 'bin', 'vtpm-libvirt-hook');

/** Notes each call and what it read, and answers as a program that refused would. */
const FAKE_PROGRAM = `#!/bin/sh
echo "$* $VTPM_HOOK_HOST $VTPM_TOKEN_FILE" >> '${CALLS}'
cat > '${STDIN}'
exit 3
`;

const settings = (extra: Partial<HookSettings> = {}): HookSettings => ({
  program: PROGRAM,
  nodeDir: '/usr/bin',
  url: 'http://127.0.0.1:7390',
  dataDir: '/var/lib/vtpm',
  socketDir: SOCKET_DIR,
  host: 'host-a',
  timeoutMs: 10_000,
  tokenFile: '/var/lib/vtpm/libvirt-hook.token',
  ...extra,
});

/** As libvirt formats it, with text a shell would expand if it ever evaluated it, and two final newlines. */
function domainXml(tpm = ''): string {
  return `<domain type='qemu'>
  <name>web-1</name>
  <uuid>${UUID}</uuid>
  <description>$HOME \`id\` $(id) 100% back\\slash * ? [a]</description>
  <devices>
${tpm}  </devices>
</domain>

`;
}
const vtpmDomain = (socketDir = SOCKET_DIR) =>
  domainXml(`${libvirtTpmXml({ version: '2.0', model: 'tpm-crb' }, `${socketDir}/${UUID}.sock`)}\n`);
const emulatorDomain = domainXml("<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>\n");

let scripts = 0;
async function installed(extra: Partial<HookSettings> = {}): Promise<string> {
  scripts += 1;
  const path = join(root, `hook-${scripts}`);
  await writeFile(path, hookScript(settings(extra)));
  return path;
}

function runHook(path: string, args: string[], xml: string): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile('sh', [path, ...args], (error, _stdout, stderr) =>
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stderr }),
    );
    child.stdin!.end(xml);
  });
}

const calls = () => readFile(CALLS, 'utf8').catch(() => '');

beforeEach(async () => {
  await rm(CALLS, { force: true });
  await rm(STDIN, { force: true });
  await mkdir(join(root, 'bin'), { recursive: true });
  await writeFile(PROGRAM, FAKE_PROGRAM, { mode: 0o755 });
});

const ACTED_ON = [
  ['prepare', 'begin'],
  ['release', 'end'],
  ['migrate', 'begin'],
];

describe('the hook script', () => {
  it('never starts the program for a domain without a vtpm-manager socket', async () => {
    const path = await installed();
    for (const xml of [domainXml(), emulatorDomain, vtpmDomain('/var/lib/other-vtpm/run')]) {
      for (const [operation, sub] of [...ACTED_ON, ['started', 'begin']]) {
        assert.deepEqual(await runHook(path, ['web-1', operation!, sub!, '-'], xml), { code: 0, stderr: '' });
      }
    }
    assert.equal(await calls(), '', 'the program was never called');
  });

  it('runs the program for a vtpm-manager domain: its arguments, its settings, the XML byte for byte', async () => {
    const path = await installed();
    for (const [operation, sub] of ACTED_ON) {
      await rm(STDIN, { force: true });
      const ran = await runHook(path, ['web-1', operation!, sub!, '-'], vtpmDomain());
      assert.deepEqual(ran, { code: 3, stderr: '' }, "the program's answer is the hook's");
      assert.equal(await readFile(STDIN, 'utf8'), vtpmDomain());
    }
    const expected = ACTED_ON.map(([op, sub]) => `web-1 ${op} ${sub} - host-a /var/lib/vtpm/libvirt-hook.token\n`);
    assert.equal(await calls(), expected.join(''));
    assert.deepEqual(await runHook(path, ['web-1', 'started', 'begin', '-'], vtpmDomain()), { code: 0, stderr: '' });
    assert.equal(await calls(), expected.join(''), 'nothing for a call it does not act on');
  });

  it('finds a socket directory libvirt writes escaped, and takes glob characters literally', async () => {
    const quoted = "/srv/o'brien & co/run";
    const escaped = await installed({ socketDir: quoted });
    assert.equal((await runHook(escaped, ['web-1', 'prepare', 'begin', '-'], vtpmDomain(quoted))).code, 3);
    assert.match(vtpmDomain(quoted), /o&apos;brien &amp; co/, 'the XML holds the path as libvirt writes it');
    assert.equal(await readFile(STDIN, 'utf8'), vtpmDomain(quoted));

    const glob = '/srv/vtpm*[run]';
    const globbed = await installed({ socketDir: glob });
    const before = await calls();
    assert.equal((await runHook(globbed, ['web-1', 'prepare', 'begin', '-'], vtpmDomain('/srv/vtpm-xr'))).code, 0);
    assert.equal(await calls(), before, 'a glob would have matched /srv/vtpm-xr');
    assert.equal((await runHook(globbed, ['web-1', 'prepare', 'begin', '-'], vtpmDomain(glob))).code, 3);
  });

  it('with vtpm-manager gone, fails only the start of a domain with a vtpm-manager socket, and says why', async () => {
    const path = await installed({ program: join(root, 'no-such-dir', 'vtpm-libvirt-hook') });
    const failed = await runHook(path, ['web-1', 'prepare', 'begin', '-'], vtpmDomain());
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /vtpm-manager: cannot act for libvirt domain web-1: .* is gone .*uninstall-hook/);
    const released = await runHook(path, ['web-1', 'release', 'end', '-'], vtpmDomain());
    assert.equal(released.code, 0, 'libvirt cannot undo a release');
    assert.match(released.stderr, /is gone/);
    for (const xml of [domainXml(), emulatorDomain])
      assert.deepEqual(await runHook(path, ['db-1', 'prepare', 'begin', '-'], xml), { code: 0, stderr: '' });
  });
});
