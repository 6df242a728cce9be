/**
 * `virsh migrate --live` between two libvirt hosts, with nothing else typed:
 * the first host is this machine's libvirtd with `vtpm serve`; the second has
 * namespaces, a libvirtd and a `vtpm agent` of its own, the same vTPM run
 * directory path (another directory behind it), and vtpm-manager's hook.
 * The destination's hook prepares the vTPM's migration at `migrate begin`,
 * QEMU carries the TPM state, the source swtpm's exit completes it, and the
 * source's release hook leaves the vTPM running on the destination. The
 * guest's writes after the migration reach the vault, and the domain boots
 * back on the first host with them.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { AgentUnderTest } from './support/agent.js';
import { buildInitramfs, findKernel, GUEST_NV_DATA, responseCode, responsesOf } from './support/guest.js';
import {
  domainXml,
  domainState,
  ensureLibvirtd,
  installVtpmCommands,
  QEMU_GROUP,
  restartLibvirtd,
  untilShutOff,
  virsh,
  waitForConsole,
  type TestDomain,
} from './support/libvirt.js';
import { NamespacedLibvirtHost } from './support/libvirt-host.js';
import { CLI, serviceForFile, temporaryDir, type VtpmJson } from './support/service.js';

const exec = promisify(execFile);
const HOOKS_DIR = '/etc/libvirt/hooks';
const REMOTE = 'vtpm-host-b';
let hostB: NamespacedLibvirtHost | undefined;
let agentB: AgentUnderTest | undefined;
let hostBDir = '';
let domain: TestDomain;

const context = serviceForFile(
  'vtpm-libvirt-mig',
  async ({ service, workDir }) => {
    const kernel = join(workDir, 'vmlinuz');
    await copyFile(await findKernel(), kernel);
    domain = {
      name: `vtpm-migrate-${process.pid}`,
      uuid: randomUUID(),
      kernel,
      initramfs: await buildInitramfs(workDir),
      console: join(workDir, 'migrate.console'),
      // The guest's TPM commands run after the migration: on the second host.
      append: 'vtpm.set=nv vtpm.delay=25',
    };
    await installVtpmCommands(workDir);
    await service.json('libvirt', 'install-hook', '--hooks-dir', HOOKS_DIR);
    await restartLibvirtd();

    // Host B: the same run directory path as this host's, another directory behind it.
    hostBDir = await temporaryDir('vtpm-host-b');
    const runDir = join(service.dataDir, 'run');
    const runDirB = join(hostBDir, 'run');
    await mkdir(runDirB, { recursive: true });
    // Host B has no control plane data directory: the admin's token, handed over, makes host B's hook its own.
    const adminToken = join(hostBDir, 'admin.token');
    await writeFile(adminToken, await readFile(join(service.dataDir, 'admin.token')), { mode: 0o600 });
    hostB = await NamespacedLibvirtHost.start(join(hostBDir, 'libvirt'), REMOTE, { [runDir]: runDirB }, async () => {
      await exec(process.execPath, [
        CLI,
        'libvirt',
        'install-hook',
        '--hooks-dir',
        join(hostBDir, 'libvirt', 'etc', 'hooks'),
        '--host',
        REMOTE,
        '--run-dir',
        runDir,
        '--url',
        service.url,
        '--data-dir',
        join(hostBDir, 'no-data-dir'),
        '--token-file',
        adminToken,
      ]);
    });
    agentB = await AgentUnderTest.start(service, join(hostBDir, 'agent'), REMOTE, {
      runDir,
      wrap: hostB.enter,
      extraArgs: ['--qemu-group', QEMU_GROUP],
    });
  },
  async () => {
    await ensureLibvirtd();
    return ['--pool-size', '0', '--qemu-group', QEMU_GROUP];
  },
);

after(async () => {
  await virsh('destroy', domain.name).catch(() => undefined);
  await virsh('undefine', domain.name).catch(() => undefined);
  await hostB?.stop();
  await agentB?.stop();
  if (hostBDir) await rm(hostBDir, { recursive: true, force: true });
  await rm(join(HOOKS_DIR, 'qemu'), { force: true });
  await restartLibvirtd();
});

const show = (vm: string) => context.service.json<VtpmJson>('show', vm);

describe('live migration through libvirt', () => {
  it(
    'virsh migrate --live moves the guest and its vTPM to the second host; ' +
      'what the guest writes there is in the vault',
    async () => {
      const file = join(context.workDir, `${domain.name}.xml`);
      await writeFile(file, domainXml(domain));
      await virsh('define', file);
      await context.service.json('libvirt', 'attach', domain.name, '--version', '2.0');
      await virsh('start', domain.name);
      assert.deepEqual([(await show(domain.uuid)).status, (await show(domain.uuid)).host], ['running', hostname()]);
      await waitForConsole(domain, 'VTPM-WAITING');

      await virsh('migrate', '--live', domain.name, hostB!.uri, '--migrateuri', 'tcp://127.0.0.1');
      assert.equal(await domainState(domain.name), 'shut off', 'the domain left the first host');
      assert.equal((await hostB!.virsh('domstate', domain.name)).trim(), 'running', 'and runs on the second');
      const deadline = Date.now() + 30_000;
      let moved = await show(domain.uuid);
      while (moved.host !== REMOTE && Date.now() < deadline) {
        await delay(100);
        moved = await show(domain.uuid);
      }
      assert.deepEqual(
        [moved.host, moved.status],
        [REMOTE, 'running'],
        "the vTPM runs on the second host, and the first host's release hook left it so",
      );

      // After its delay the guest, now on the second host, writes its NV index, then powers off.
      const console = await waitForConsole(domain, 'VTPM-DONE');
      assert.equal(
        responseCode(responsesOf(console)['3-write']!),
        0,
        `the migrated guest wrote its NV index: ${console.slice(-2000)}`,
      );
      await context.service.waitForStatus(domain.uuid, 'stopped', 30_000);

      // Back on the first host (its definition stayed there): the write made on the second host is read back.
      await writeFile(domain.console, '');
      await virsh('start', domain.name);
      const back = responsesOf(await untilShutOff(domain));
      assert.ok(
        back['1-data']!.includes(GUEST_NV_DATA),
        'the boot on the first host reads what the guest wrote on the second',
      );
      assert.equal((await show(domain.uuid)).host, hostname());
    },
  );
});
