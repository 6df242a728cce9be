import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { HostSetupError } from '../errors.js';
import { qemuAccountSettings, qemuGroupFor } from './host-setup.js';

const dir = await mkdtemp(join(tmpdir(), 'vtpm-host-setup-'));
after(() => rm(dir, { recursive: true, force: true }));

async function conf(text: string): Promise<string> {
  const path = join(dir, `qemu-${Math.random().toString(36).slice(2)}.conf`);
  await writeFile(path, text);
  return path;
}

describe("QEMU's group from libvirt's qemu.conf", () => {
  it('reads user and group, the last setting counting, and skips comments', () => {
    const text = '#user = "nobody"\nuser = "qemu"\n  group = "kvm"  # comment\nuser = "libvirt-qemu"\n';
    assert.deepEqual(qemuAccountSettings(text), { user: 'libvirt-qemu', group: 'kvm' });
    assert.deepEqual(qemuAccountSettings('# user = "root"\nsecurity_driver = "none"\n'), {});
  });

  it('shares nothing without libvirt, or when QEMU runs as root', async () => {
    assert.equal(await qemuGroupFor(undefined, join(dir, 'missing.conf')), undefined);
    assert.equal(await qemuGroupFor(undefined, await conf('user = "root"\ngroup = "root"\n')), undefined);
    assert.equal(await qemuGroupFor(undefined, await conf('user = "+0"\n')), undefined);
    assert.equal(await qemuGroupFor('root'), undefined);
  });

  it('shares with the group qemu.conf names, and says which setting to change if QEMU cannot reach it', async () => {
    const group = await qemuGroupFor(undefined, await conf('user = "nobody"\ngroup = "root"\n'));
    assert.equal(group?.gid, 0);
    assert.match(group?.remedy ?? '', /user = "root" in .*qemu-.*\.conf/);
  });

  it('refuses to start when the group qemu.conf names does not exist, naming the setting', async () => {
    const path = await conf('user = "nobody"\ngroup = "no-such-group-vtpm"\n');
    await assert.rejects(
      qemuGroupFor(undefined, path),
      (error: Error) =>
        error instanceof HostSetupError &&
        error.message.includes(`group = "no-such-group-vtpm" in ${path}`) &&
        error.message.includes('--qemu-group'),
    );
  });
});
