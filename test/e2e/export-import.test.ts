/**
 * Export a vTPM from one deployment and import it into another (a second
 * `vtpm serve` on its own data directory): the imported vTPM boots with the
 * same EK and continues from the exported state. Damaged bundles and wrong
 * passphrases are refused and leave nothing behind.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { bootGuest, buildInitramfs, findKernel, resetCountOf, type GuestReport } from './support/guest.js';
import {
  ServiceUnderTest,
  ekModulus,
  serviceForFile,
  temporaryDir,
  type StartedJson,
  type VtpmJson,
} from './support/service.js';

let kernel: string;
let initramfs: string;
let target: ServiceUnderTest | undefined;
let targetDir: string | undefined;
let passphraseFile: string;
const context = serviceForFile('vtpm-export', async ({ workDir }) => {
  kernel = await findKernel();
  initramfs = await buildInitramfs(workDir);
  // The second deployment has a directory of its own: the fixture removes its work directory on its own schedule.
  targetDir = await temporaryDir('vtpm-target');
  target = await ServiceUnderTest.start(join(targetDir, 'data'));
  passphraseFile = join(workDir, 'passphrase');
  await writeFile(passphraseFile, 'a long enough bundle passphrase\n', { mode: 0o600 });
});

after(async () => {
  try {
    if (target)
      for (const vtpm of await target.json<VtpmJson[]>('list')) await target.cli('delete', '--force', '--yes', vtpm.vm);
  } finally {
    await target?.stop();
    if (targetDir) await rm(targetDir, { recursive: true, force: true });
  }
});

const targetService = (): ServiceUnderTest => {
  assert.ok(target, 'the target deployment starts in the setup');
  return target;
};

async function boot(service: ServiceUnderTest, vm: string): Promise<GuestReport> {
  const report = await bootGuest({
    kernel,
    initramfs,
    qemuArgs: (await service.json<StartedJson>('start', vm)).qemu_args,
  });
  await service.waitForStatus(vm, 'stopped');
  return report;
}

async function exported(vm: string, name: string, ...options: string[]): Promise<string> {
  const out = join(context.workDir, name);
  const result = await context.service.json<{ bytes: number }>(
    'export',
    vm,
    '--out',
    out,
    '--passphrase-file',
    passphraseFile,
    ...options,
  );
  assert.equal((await stat(out)).size, result.bytes);
  assert.equal((await stat(out)).mode & 0o777, 0o600);
  return out;
}

describe('export and import', () => {
  it('an imported vTPM boots on another deployment with the same EK and state', async () => {
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '2.0', '--model', 'tpm-crb');
    const before = await boot(context.service, vm);
    const modulus = await ekModulus(context.service, vm);
    const bundle = await exported(vm, 'bundle-all', '--generations', 'all');

    const imported = await targetService().json<VtpmJson>('import', bundle, '--passphrase-file', passphraseFile);
    assert.deepEqual(
      [imported.vm, imported.version, imported.model, imported.status],
      [vm, '2.0', 'tpm-crb', 'stopped'],
    );
    const history = await targetService().json<Array<{ reason: string }>>('history', vm);
    assert.ok(history.length > 1 && history.every((g) => g.reason === 'import'));
    assert.ok((await ekModulus(targetService(), vm)).equals(modulus));

    const after = await boot(targetService(), vm);
    assert.ok(after.responses.ekpublic!.includes(modulus), 'the imported vTPM has another EK');
    assert.ok(
      resetCountOf(after.responses.readclock!) > resetCountOf(before.responses.readclock!),
      'the imported vTPM did not continue from the exported state',
    );
  });

  it('imports under another VM UUID', async () => {
    const vm = randomUUID();
    const copy = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '1.2');
    const bundle = await exported(vm, 'bundle-12');
    const imported = await targetService().json<VtpmJson>(
      'import',
      bundle,
      '--vm',
      copy,
      '--passphrase-file',
      passphraseFile,
    );
    assert.equal(imported.vm, copy);
    assert.equal((await targetService().json<Array<{ generation: number }>>('history', copy)).length, 1);
    assert.ok((await ekModulus(targetService(), copy)).equals(await ekModulus(context.service, vm)));
    const again = await targetService().cli('import', bundle, '--vm', copy, '--passphrase-file', passphraseFile);
    assert.equal(again.code, 4, 'a second import under the same UUID is a conflict');
  });

  it('on the deployment that still has the original: refused, unless --clone (with a warning) or --move', async () => {
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '2.0');
    const bundle = await exported(vm, 'bundle-same-deployment');
    const here = (...args: string[]) =>
      context.service.cli('import', bundle, '--passphrase-file', passphraseFile, ...args);
    const [refusedVm, cloneVm, movedVm] = [randomUUID(), randomUUID(), randomUUID()];
    const refused = await here('--vm', refusedVm);
    assert.equal(refused.code, 4);
    assert.match(refused.stderr, /two VMs one TPM identity \(the same EK\)\. Pass --move .* or --clone/);
    assert.equal((await context.service.cli('show', refusedVm)).code, 3, 'nothing was imported');
    const cloned = await here('--vm', cloneVm, '--clone');
    assert.equal(cloned.code, 0, cloned.stderr);
    assert.match(cloned.stderr, /warning: two VMs now have one TPM identity/);
    assert.ok((await ekModulus(context.service, cloneVm)).equals(await ekModulus(context.service, vm)));
    assert.equal((await here('--vm', randomUUID(), '--clone', '--move')).code, 2, '--clone and --move conflict');
    const moved = await here('--vm', movedVm, '--move');
    assert.equal(moved.code, 0, moved.stderr);
    assert.equal((await context.service.cli('show', vm)).code, 3, 'the original is gone');
    assert.equal((await context.service.json<VtpmJson>('show', movedVm)).status, 'stopped');
  });

  it('refuses truncated, altered and wrongly unlocked bundles, and imports nothing', async () => {
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '2.0');
    const bundle = await readFile(await exported(vm, 'bundle-bad'));
    const flipped = Buffer.from(bundle);
    flipped[Math.floor(flipped.length / 2)]! ^= 0x10;
    const cases = { truncated: bundle.subarray(0, bundle.length - 40), flipped, empty: Buffer.alloc(0) };
    const before = (await targetService().json<VtpmJson[]>('list')).length;
    for (const [name, content] of Object.entries(cases)) {
      const file = join(context.workDir, `bundle-${name}`);
      await writeFile(file, content);
      const result = await targetService().cli('import', file, '--passphrase-file', passphraseFile);
      assert.equal(result.code, 6, `${name}: ${result.stderr}`);
      assert.match(result.stderr, /bundle/);
    }
    const wrong = join(context.workDir, 'wrong-passphrase');
    await writeFile(wrong, 'not the passphrase at all');
    const result = await targetService().cli('import', join(context.workDir, 'bundle-bad'), '--passphrase-file', wrong);
    assert.equal(result.code, 6);
    assert.match(result.stderr, /passphrase is wrong/);
    assert.equal((await targetService().json<VtpmJson[]>('list')).length, before);
  });

  it('refuses a short passphrase when exporting', async () => {
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '2.0');
    const short = join(context.workDir, 'short');
    await writeFile(short, 'short');
    const result = await context.service.cli(
      'export',
      vm,
      '--out',
      join(context.workDir, 'never'),
      '--passphrase-file',
      short,
    );
    assert.equal(result.code, 2);
    assert.match(result.stderr, /passphrase: expected at least 12 characters/);
    assert.ok(
      !result.stderr.includes("'short'") && !result.stderr.includes('"short"'),
      'the error echoes the passphrase',
    );
  });
});
