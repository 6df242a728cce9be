/**
 * vtpm-manager under a real libvirtd with Debian's defaults (QEMU as
 * libvirt-qemu) and `vtpm serve` with its own: the qemu hook, installed
 * beside a hook of the site's own, starts and stops vTPMs around `virsh
 * start` / `virsh destroy` as the host's hook identity; a domain is given a
 * vTPM with `vtpm libvirt attach`; `vtpm libvirt check` finds what libvirt
 * and vtpm-manager disagree on; a start with the control plane down fails
 * fast with a message naming vtpm-manager; and a TPM created by libvirt's own
 * emulator backend is adopted with its EK certificate and NV contents
 * unchanged.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { copyFile, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { buildInitramfs, findKernel, GUEST_NV_DATA, responseCode, responsesOf } from './support/guest.js';
import {
  domainXml,
  ensureLibvirtd,
  installVtpmCommands,
  restartLibvirtd,
  untilShutOff,
  virsh,
  waitForConsole,
  type TestDomain,
} from './support/libvirt.js';
import { serviceForFile, type VtpmJson } from './support/service.js';

const exec = promisify(execFile);
const HOOKS_DIR = '/etc/libvirt/hooks';
/** A hook of the site's own, which vtpm-manager's must not replace: it notes every call. */
const SITE_HOOK = join(HOOKS_DIR, 'qemu');
const SITE_HOOK_LOG = `/tmp/vtpm-site-hook-${process.pid}.log`;
const siteHook = `#!/bin/sh\ncat >/dev/null\necho "$1 $2 $3" >> ${SITE_HOOK_LOG}\n`;
let kernel = '';
let initramfs = '';
const defined: string[] = [];
const secrets: string[] = [];

const context = serviceForFile(
  'vtpm-libvirt',
  async ({ service, workDir }) => {
    // A copy of its own: libvirt labels the files a domain uses,
    // and refuses a file another domain holds under another label.
    kernel = join(workDir, 'vmlinuz');
    await copyFile(await findKernel(), kernel);
    initramfs = await buildInitramfs(workDir);
    const bin = await installVtpmCommands(workDir);
    await mkdir(HOOKS_DIR, { recursive: true });
    await writeFile(SITE_HOOK, siteHook, { mode: 0o755 });
    const installed = await service.json<{ hook: string; program: string }>(
      'libvirt',
      'install-hook',
      '--hooks-dir',
      HOOKS_DIR,
    );
    assert.equal(installed.hook, join(HOOKS_DIR, 'qemu.d', 'vtpm-manager'), 'beside the hook of the site');
    assert.equal(installed.program, join(bin, 'vtpm-libvirt-hook'), 'the installed program, not the checkout');
    assert.equal(await readFile(SITE_HOOK, 'utf8'), siteHook);
    await restartLibvirtd();
  },
  async () => {
    await ensureLibvirtd();
    // No --qemu-group: QEMU runs as libvirt's unprivileged user, and the service finds its group in qemu.conf.
    return ['--pool-size', '0'];
  },
);

after(async () => {
  for (const name of defined) {
    await virsh('destroy', name).catch(() => undefined);
    await virsh('undefine', name, '--nvram', '--tpm').catch(() => virsh('undefine', name).catch(() => undefined));
  }
  for (const secret of secrets) await virsh('secret-undefine', secret).catch(() => undefined);
  // A hook libvirtd knows of must stay executable while it runs: remove it, then restart libvirtd.
  await rm(join(HOOKS_DIR, 'qemu.d', 'vtpm-manager'), { force: true });
  await rm(SITE_HOOK, { force: true });
  await rm(SITE_HOOK_LOG, { force: true });
  await restartLibvirtd();
});

function testDomain(name: string, extra: Partial<TestDomain> = {}): TestDomain {
  return { name, uuid: randomUUID(), kernel, initramfs, console: join(context.workDir, `${name}.console`), ...extra };
}

async function define(domain: TestDomain): Promise<void> {
  const file = join(context.workDir, `${domain.name}.xml`);
  await writeFile(file, domainXml(domain));
  await virsh('define', file);
  defined.push(domain.name);
}

async function vtpmStatus(vm: string): Promise<string> {
  return (await context.service.json<VtpmJson>('show', vm)).status;
}

describe('libvirt hook and attach', () => {
  it(
    'attach, virsh start: the guest writes its TPM; ' +
      'virsh destroy stops the vTPM with the write committed; the next start sees it',
    async () => {
      const domain = testDomain(`vtpm-attach-${process.pid}`, { append: 'vtpm.set=nv vtpm.hold=600' });
      await define(domain);
      const attached = await context.service.json<{ vtpm: VtpmJson }>(
        'libvirt',
        'attach',
        domain.name,
        '--version',
        '2.0',
      );
      assert.equal(attached.vtpm.vm, domain.uuid);
      assert.match(await virsh('dumpxml', domain.name), /<backend type='external'>/);

      await virsh('start', domain.name);
      assert.equal(await vtpmStatus(domain.uuid), 'running', 'the hook started the vTPM before QEMU');
      const socket = await stat(join(context.service.dataDir, 'run', `${domain.uuid}.sock`));
      assert.equal(socket.gid, Number((await exec('getent', ['group', 'libvirt-qemu'])).stdout.split(':')[2]));
      const events = await context.service.json<Array<{ actor: string; operation: string }>>(
        'events',
        '--vm',
        domain.uuid,
      );
      assert.ok(
        events.some((e) => e.actor === `libvirt-hook@${hostname()}` && /start/.test(e.operation)),
        `the start is the hook's, not the admin's: ${JSON.stringify(events)}`,
      );
      assert.match(await readFile(SITE_HOOK_LOG, 'utf8'), new RegExp(`${domain.name} prepare begin`));
      const firstConsole = await waitForConsole(domain, 'VTPM-HOLDING');
      assert.match(firstConsole, /VTPM-DEVICES .*\/dev\/tpm0/);
      const first = responsesOf(firstConsole);
      assert.notEqual(responseCode(first['1-data']!), 0, 'nothing written yet at the first boot');
      assert.equal(responseCode(first['3-write']!), 0);

      await virsh('destroy', domain.name);
      assert.equal(await vtpmStatus(domain.uuid), 'stopped', 'the release hook stopped the vTPM');
      const history = await context.service.json<Array<{ reason: string }>>('history', domain.uuid);
      assert.ok(
        history.some((g) => g.reason === 'sync' || g.reason === 'stop'),
        "the guest's write reached the vault",
      );

      await virsh('start', domain.name);
      const second = responsesOf(await waitForConsole(domain, 'VTPM-HOLDING'));
      assert.equal(responseCode(second['1-data']!), 0);
      assert.ok(second['1-data']!.includes(GUEST_NV_DATA), 'the second boot reads what the first wrote');
      await virsh('destroy', domain.name);
    },
  );

  it("refuses to attach with a spec other than the existing vTPM's, naming both", async () => {
    const domain = testDomain(`vtpm-respec-${process.pid}`);
    await define(domain);
    await context.service.json('libvirt', 'attach', domain.name, '--version', '2.0');
    const refused = await context.service.cli('libvirt', 'attach', domain.name, '--version', '1.2');
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /TPM version 2\.0, not the 1\.2 asked for/);
    const model = await context.service.cli('libvirt', 'attach', domain.name, '--model', 'tpm-crb');
    assert.equal(model.code, 2, model.stderr);
    assert.match(model.stderr, /TPM model tpm-tis, not the tpm-crb asked for/);
    assert.equal((await context.service.json<VtpmJson>('show', domain.uuid)).version, '2.0');
    await context.service.json('libvirt', 'attach', domain.name, '--version', '2.0');
  });

  it('check lists a domain whose vTPM is gone and a vTPM whose domain is gone; --prune needs --yes', async () => {
    const kept = testDomain(`vtpm-check-kept-${process.pid}`);
    const undefined_ = testDomain(`vtpm-check-gone-${process.pid}`);
    for (const domain of [kept, undefined_]) {
      await define(domain);
      await context.service.json('libvirt', 'attach', domain.name, '--version', '2.0');
    }
    await context.service.json('delete', '--yes', kept.uuid);
    await virsh('undefine', undefined_.name);
    const found = await context.service.json<{
      domains_without_vtpm: Array<{ domain: string }>;
      vtpms_without_domain: Array<{ vm: string }>;
    }>('libvirt', 'check');
    assert.ok(
      found.domains_without_vtpm.some((d) => d.domain === kept.name),
      JSON.stringify(found),
    );
    assert.ok(
      found.vtpms_without_domain.some((v) => v.vm === undefined_.uuid),
      JSON.stringify(found),
    );

    const unconfirmed = await context.service.cli('libvirt', 'check', '--prune');
    assert.equal(unconfirmed.code, 2, unconfirmed.stderr);
    assert.match(unconfirmed.stderr, /pass --yes/);
    assert.equal(await vtpmStatus(undefined_.uuid), 'stopped', 'nothing deleted without a confirmation');
    const pruned = await context.service.json<{ pruned: string[] }>('libvirt', 'check', '--prune', '--yes');
    assert.ok(pruned.pruned.includes(undefined_.uuid));
    assert.equal((await context.service.cli('show', undefined_.uuid)).code, 3);
  });

  it('refuses to attach to a domain that has a TPM, unless --replace', async () => {
    const domain = testDomain(`vtpm-has-tpm-${process.pid}`, {
      tpmXml: "<tpm model='tpm-tis'>\n  <backend type='emulator' version='2.0'/>\n</tpm>",
    });
    await define(domain);
    const refused = await context.service.cli('libvirt', 'attach', domain.name, '--version', '2.0');
    assert.equal(refused.code, 4, refused.stderr);
    assert.match(refused.stderr, /already has a TPM \(emulator backend\).*--replace.*vtpm libvirt adopt/);
    await context.service.json('libvirt', 'attach', domain.name, '--version', '2.0', '--replace');
    const xml = await virsh('dumpxml', '--inactive', domain.name);
    assert.equal(xml.match(/<tpm /g)?.length, 1);
    assert.match(xml, /<backend type='external'>/);
  });
});

describe("adopting a TPM from libvirt's emulator backend", () => {
  it(
    'keeps the EK certificate, the EK and an NV index the guest wrote before, ' +
      'from a state libvirt encrypted with a private secret',
    async () => {
      // As Nova sets it up: a private libvirt secret of usage vtpm encrypts the emulator's state.
      const secret = randomUUID();
      const secretFile = join(context.workDir, 'secret.xml');
      await writeFile(
        secretFile,
        `<secret ephemeral='no' private='yes'><uuid>${secret}</uuid>` +
          `<usage type='vtpm'><name>vtpm-test-${secret}</name></usage></secret>`,
      );
      await virsh('secret-define', secretFile);
      secrets.push(secret);
      await virsh('secret-set-value', secret, Buffer.from(`passphrase-${secret}`).toString('base64'));
      const domain = testDomain(`vtpm-adopt-${process.pid}`, {
        append: 'vtpm.set=nv',
        tpmXml:
          `<tpm model='tpm-crb'>\n  <backend type='emulator' version='2.0'>\n` +
          `    <encryption secret='${secret}'/>\n  </backend>\n</tpm>`,
      });
      await define(domain);
      // First boot under libvirt's own swtpm writes the NV index; the second reads everything back.
      await virsh('start', domain.name);
      await untilShutOff(domain);
      await virsh('start', domain.name);
      const before = responsesOf(await untilShutOff(domain));
      assert.equal(responseCode(before['1-data']!), 0, 'the index written at the first boot');
      assert.equal(responseCode(before['5-ekcert-0']!), 0, "libvirt's TPM carries an EK certificate");

      const adopted = await context.service.json<{ vtpm: VtpmJson }>('libvirt', 'adopt', domain.name);
      assert.equal(adopted.vtpm.vm, domain.uuid);
      assert.equal(adopted.vtpm.model, 'tpm-crb');
      const xml = await virsh('dumpxml', '--inactive', domain.name);
      assert.match(xml, /<tpm model='tpm-crb'>\s*<backend type='external'>/);

      await virsh('start', domain.name);
      const after = responsesOf(await untilShutOff(domain));
      for (const name of ['1-data', '4-ekcert-public', '5-ekcert-0', '6-ekcert-512', '7-ekpublic']) {
        assert.deepEqual(after[name], before[name], `${name} is the same after adoption`);
      }
      assert.ok(after['1-data']!.includes(GUEST_NV_DATA));
      assert.equal(await vtpmStatus(domain.uuid), 'stopped');

      // vtpm ek serves the certificate the guest reads from NV.
      const { certificates } = await context.service.json<{ certificates: Array<{ key_type: string; pem: string }> }>(
        'ek',
        domain.uuid,
        '--key-type',
        'rsa2048',
      );
      const der = Buffer.from(certificates[0]!.pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
      assert.ok(before['5-ekcert-0']!.includes(der.subarray(0, 400)), 'the stored certificate is the one in the TPM');
    },
  );

  it("refuses a domain whose TPM is not libvirt's emulator", async () => {
    const domain = testDomain(`vtpm-no-tpm-${process.pid}`);
    await define(domain);
    const refused = await context.service.cli('libvirt', 'adopt', domain.name);
    assert.equal(refused.code, 4, refused.stderr);
    assert.match(refused.stderr, /has no TPM; only a TPM of libvirt's emulator backend can be adopted/);
    const missing = await context.service.cli('libvirt', 'adopt', `no-such-domain-${process.pid}`);
    assert.equal(missing.code, 3, missing.stderr);
  });
});

describe('uninstall-hook', () => {
  it("removes its own hook and revokes its token; the site's hook stays", async () => {
    const tokenFile = join(context.service.dataDir, 'libvirt-hook.token');
    const token = (await readFile(tokenFile, 'utf8')).trim();
    assert.equal((await context.service.cliAs(token, 'show', randomUUID())).code, 3, 'the hook token works');
    const removed = await context.service.json<{ removed: string[]; left_alone: string[] }>(
      'libvirt',
      'uninstall-hook',
      '--hooks-dir',
      HOOKS_DIR,
    );
    assert.deepEqual(removed.removed, [join(HOOKS_DIR, 'qemu.d', 'vtpm-manager')]);
    assert.deepEqual(removed.left_alone, [SITE_HOOK]);
    assert.equal(await readFile(SITE_HOOK, 'utf8'), siteHook);
    assert.equal((await context.service.cliAs(token, 'show', randomUUID())).code, 5, 'its token is revoked');
    await context.service.json('libvirt', 'install-hook', '--hooks-dir', HOOKS_DIR);
  });
});

// Last: restarting the service moves it to another port, which the installed hook does not know.
describe('control plane down', () => {
  it('with the control plane down, virsh start fails at once with a message naming vtpm-manager', async () => {
    const domain = testDomain(`vtpm-down-${process.pid}`, { append: 'vtpm.hold=600' });
    await define(domain);
    await context.service.json('libvirt', 'attach', domain.name, '--version', '2.0');
    await context.restart(async () => {
      // The test's own deadline bounds a hang; the hook's timeout is far shorter.
      const started = await exec('virsh', ['-c', 'qemu:///system', 'start', domain.name], { timeout: 60_000 }).then(
        () => undefined,
        (error: { stderr?: string; killed?: boolean }) => error,
      );
      assert.ok(started, 'virsh start failed');
      assert.equal(started.killed, false, 'virsh start did not hang');
      assert.match(
        started.stderr ?? '',
        /vtpm-manager: cannot start the vTPM of libvirt domain .* cannot reach vtpm-manager/,
      );
      assert.equal((await virsh('domstate', domain.name)).trim(), 'shut off');
    });
  });
});
