/**
 * The state vault with real guests: what a running guest writes into its TPM
 * reaches the vault while it runs; a host that lost its disk boots from the
 * vault; tampered, swapped and replayed generations are refused, and the vTPM
 * stays startable from the last good generation.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import Sqlite from 'better-sqlite3';
import {
  CLOCK_SET_TO,
  bootGuest,
  buildInitramfs,
  clockOf,
  findKernel,
  launchGuest,
  resetCountOf,
  responseCode,
  type GuestReport,
} from './support/guest.js';
import { ekModulus, serviceForFile, type StartedJson } from './support/service.js';

let kernel: string;
let initramfs: string;
let database: Sqlite.Database;
const context = serviceForFile('vtpm-vault', async ({ service, workDir }) => {
  kernel = await findKernel();
  initramfs = await buildInitramfs(workDir);
  database = new Sqlite(join(service.dataDir, 'vtpm.sqlite'));
  database.pragma('busy_timeout = 5000');
});

interface Generation {
  generation: number;
  kind: string;
  reason: string;
  digest: string;
}

after(() => database?.close());

const history = (vm: string) => context.service.json<Generation[]>('history', vm);
const newestGeneration = async (vm: string) => (await history(vm)).find((g) => g.kind === 'tpm')!.generation;

async function boot(vm: string): Promise<GuestReport> {
  const report = await bootGuest({
    kernel,
    initramfs,
    qemuArgs: (await context.service.json<StartedJson>('start', vm)).qemu_args,
  });
  await context.service.waitForStatus(vm, 'stopped');
  return report;
}

function copyColumns(
  from: { vm: string; generation: number },
  to: { vm: string; generation: number },
  columns: string[],
): void {
  const source = database
    .prepare(`SELECT ${columns.join(', ')} FROM state_generations WHERE vm = ? AND kind = 'tpm' AND generation = ?`)
    .get(from.vm, from.generation) as Record<string, unknown>;
  const assignments = columns.map((c) => `${c} = @${c}`).join(', ');
  database
    .prepare(`UPDATE state_generations SET ${assignments} WHERE vm = @vm AND kind = 'tpm' AND generation = @generation`)
    .run({ ...source, vm: to.vm, generation: to.generation });
}

async function assertStartRefused(vm: string, generation: number): Promise<void> {
  const result = await context.service.cli('start', vm);
  assert.equal(result.code, 6, `start should be refused: ${result.stdout}${result.stderr}`);
  assert.ok(
    result.stderr.includes(vm) && result.stderr.includes(`generation ${generation}`),
    `the error names the VM and the generation: ${result.stderr}`,
  );
  assert.equal((await context.service.json<{ status: string }>('show', vm)).status, 'stopped');
}

describe('the state vault', () => {
  it(
    'commits what a running guest writes while it runs, ' + 'and a host that lost its disk boots from the vault',
    async () => {
      const vm = randomUUID();
      await context.service.json('create', '--vm', vm, '--version', '2.0');
      assert.deepEqual(
        (await history(vm)).map((g) => [g.generation, g.kind, g.reason]),
        [[1, 'tpm', 'create']],
      );

      const guest = launchGuest({
        kernel,
        initramfs,
        holdSeconds: 6,
        qemuArgs: (await context.service.json<StartedJson>('start', vm)).qemu_args,
      });
      let exited = false;
      void guest.report.finally(() => (exited = true)).catch(() => undefined);
      while (!guest.holding()) {
        assert.ok(!exited, 'the guest exited before it used its TPM');
        await delay(50);
      }
      // The guest has written (Startup, ReadClock) and now idles: its state must reach the vault before it exits.
      let synced: Generation | undefined;
      while (!synced && !exited) {
        synced = (await history(vm)).find((g) => g.reason === 'sync');
        if (!synced) await delay(100);
      }
      assert.ok(synced && !exited, 'no sync generation was committed while the guest ran');
      const first = await guest.report;
      await context.service.waitForStatus(vm, 'stopped');
      const [last] = (await history(vm)).filter((g) => g.kind === 'tpm');
      assert.equal(last?.reason, 'stop', "the run's last generation says it ended there");

      await rm(join(context.service.dataDir, 'tpm', vm), { recursive: true, force: true });
      const second = await boot(vm);
      assert.ok(
        resetCountOf(second.responses.readclock!) > resetCountOf(first.responses.readclock!),
        'the second boot did not start from what the first wrote',
      );
      assert.equal(responseCode(second.responses.ekpublic!), 0);
      assert.ok(second.responses.ekpublic!.includes(await ekModulus(context.service, vm)));
    },
  );

  it('commits, after a restart, what a guest wrote while the control plane was down', async () => {
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '2.0');
    const guest = launchGuest({
      kernel,
      initramfs,
      delaySeconds: 4,
      qemuArgs: (await context.service.json<StartedJson>('start', vm)).qemu_args,
    });
    while (!guest.waiting()) await delay(50);
    let during: GuestReport | undefined;
    // The guest sets its TPM's clock and powers off while `vtpm serve` is down; swtpm writes its state and exits.
    await context.restart(async () => {
      during = await guest.report;
    });
    assert.ok(clockOf(during!.responses.readclock!) >= CLOCK_SET_TO, 'the guest could not set its clock');
    assert.equal((await context.service.json<{ status: string }>('show', vm)).status, 'stopped');
    assert.equal((await history(vm))[0]!.reason, 'stop');

    const after = await boot(vm);
    assert.ok(
      clockOf(after.responses.readclock!) >= CLOCK_SET_TO,
      'what the guest wrote while the control plane was down was lost',
    );
  });

  it('refuses tampered, swapped and replayed generations, and restores the last good one', async () => {
    const a = randomUUID();
    const b = randomUUID();
    await context.service.json('create', '--vm', a, '--version', '2.0');
    await context.service.json('create', '--vm', b, '--version', '2.0');
    const firstBoot = await boot(a);
    const modulus = await ekModulus(context.service, a);
    const good = await newestGeneration(a);
    assert.ok(good > 1);

    // A flipped byte in the newest generation.
    const row = database
      .prepare("SELECT ciphertext FROM state_generations WHERE vm = ? AND kind = 'tpm' AND generation = ?")
      .get(a, good) as { ciphertext: Buffer };
    row.ciphertext[row.ciphertext.length - 3]! ^= 0x40;
    database
      .prepare("UPDATE state_generations SET ciphertext = ? WHERE vm = ? AND kind = 'tpm' AND generation = ?")
      .run(row.ciphertext, a, good);
    await assertStartRefused(a, good);
    await context.service.json('restore', a, '--generation', String(good - 1));
    const afterFlip = await newestGeneration(a);

    // The newest generation of another VM, swapped in whole.
    copyColumns({ vm: b, generation: 1 }, { vm: a, generation: afterFlip }, [
      'ciphertext',
      'wrapped_key',
      'digest',
      'previous_digest',
    ]);
    await assertStartRefused(a, afterFlip);
    await context.service.json('restore', a, '--generation', String(good - 1));
    const afterSwap = await newestGeneration(a);

    // An older generation of the same VM replayed in place of the newest.
    copyColumns({ vm: a, generation: 1 }, { vm: a, generation: afterSwap }, [
      'ciphertext',
      'wrapped_key',
      'digest',
      'previous_digest',
    ]);
    await assertStartRefused(a, afterSwap);

    // The vTPM stays startable from the last good generation.
    const restored = await context.service.json<{ generation: number }>('restore', a, '--generation', String(good - 1));
    assert.equal(restored.generation, afterSwap + 1);
    const afterRestore = await boot(a);
    assert.ok(afterRestore.responses.ekpublic!.includes(modulus));
    assert.ok(resetCountOf(afterRestore.responses.readclock!) >= resetCountOf(firstBoot.responses.readclock!));
    const reasons = (await history(a)).map((g) => g.reason);
    assert.ok(reasons.filter((r) => r === 'restore').length >= 3, `restores are recorded: ${reasons.join(',')}`);
  });

  it('refuses to restore a running vTPM, or a generation that does not exist', async () => {
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '1.2');
    assert.equal((await context.service.cli('restore', vm, '--generation', '7')).code, 3);
    await context.service.json('start', vm);
    const running = await context.service.cli('restore', vm, '--generation', '1');
    assert.equal(running.code, 4);
    assert.match(running.stderr, /only a stopped vTPM can be restored/);
    await context.service.json('stop', vm);
    assert.ok(!existsSync(join(context.service.dataDir, 'run', `${vm}.sock`)));
  });
});

describe('UEFI guests', () => {
  it(
    'boot with OVMF through qemu_args, their variable store is synced, ' + 'and a secure-boot change resets it',
    async () => {
      const vm = randomUUID();
      const created = await context.service.json<{ firmware: string; secure_boot: boolean }>(
        'create',
        '--vm',
        vm,
        '--version',
        '2.0',
        '--firmware',
        'uefi',
      );
      assert.deepEqual([created.firmware, created.secure_boot], ['uefi', false]);
      const nvramGenerations = async () => (await history(vm)).filter((g) => g.kind === 'nvram');
      assert.deepEqual(
        (await nvramGenerations()).map((g) => [g.generation, g.reason]),
        [[1, 'create']],
      );

      const started = await context.service.json<StartedJson & { libvirt_firmware_xml: string }>('start', vm);
      assert.ok(started.qemu_args.some((arg) => arg.startsWith('if=pflash') && arg.includes('OVMF_CODE_4M.fd')));
      assert.match(started.libvirt_firmware_xml, /<nvram>.+<\/nvram>/);
      const report = await bootGuest({ kernel, initramfs, qemuArgs: started.qemu_args });
      await context.service.waitForStatus(vm, 'stopped');
      assert.ok(report.devices.includes('/dev/tpm0'));
      assert.equal(responseCode(report.responses.ekpublic!), 0);
      // OVMF writes its boot variables: the variable store changed and reached the vault.
      const synced = await nvramGenerations();
      assert.ok(
        synced.length > 1 && synced[0]!.reason !== 'create',
        `no synced variable store: ${JSON.stringify(synced)}`,
      );

      const on = await context.service.json<{ secure_boot: boolean }>('update', vm, '--secure-boot', 'on', '--yes');
      assert.equal(on.secure_boot, true);
      const afterOn = await nvramGenerations();
      assert.deepEqual(
        afterOn.map((g) => [g.generation, g.reason]),
        [[1, 'create']],
      );
      assert.notEqual(afterOn[0]!.digest, synced[0]!.digest);
      const secureArgs = await context.service.json<{ qemu_args: string[] }>('qemu-args', vm);
      assert.ok(
        secureArgs.qemu_args.includes('smm=on') &&
          secureArgs.qemu_args.some((a) => a.includes('OVMF_CODE_4M.secboot.fd')),
      );

      await context.service.json('update', vm, '--secure-boot', 'off', '--yes');
      const afterOff = await nvramGenerations();
      assert.deepEqual(
        afterOff.map((g) => [g.generation, g.reason]),
        [[1, 'create']],
      );
      assert.notEqual(
        afterOff[0]!.digest,
        afterOn[0]!.digest,
        'the variable store without Microsoft keys differs from the one with',
      );
      // The TPM's generations are untouched by the firmware's.
      assert.ok((await history(vm)).filter((g) => g.kind === 'tpm').length > 1);
    },
  );

  it('refuses secure boot for a BIOS guest', async () => {
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '2.0');
    const bios = await context.service.cli('update', vm, '--secure-boot', 'on');
    assert.equal(bios.code, 4);
    assert.match(bios.stderr, /secure boot needs UEFI/);
    const conflict = await context.service.cli(
      'create',
      '--vm',
      randomUUID(),
      '--version',
      '2.0',
      '--firmware',
      'bios',
      '--secure-boot',
    );
    assert.equal(conflict.code, 2);
    assert.match(
      conflict.stderr,
      /secure boot \(--secure-boot\) needs UEFI firmware, but --firmware bios asks for BIOS/,
    );
    const unnamed = await context.service.cli('create', '--vm', randomUUID(), '--version', '2.0', '--secure-boot');
    assert.equal(unnamed.code, 2, 'secure boot does not switch the default BIOS to UEFI by itself');
    assert.match(unnamed.stderr, /no firmware was named and the default is BIOS: add --firmware uefi/);
    const misspelled = await context.service.cli('create', '--vm', randomUUID(), '--flavor', 'hw_tpm_version=1.2');
    assert.equal(misspelled.code, 2);
    assert.match(misspelled.stderr, /hw_tpm_version is an image property: pass it with --image/);
  });
});
