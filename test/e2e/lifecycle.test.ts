/**
 * The vTPM lifecycle and its failure paths through the real CLI and API:
 * bad input creates nothing, wrong states are refused with clear errors and
 * distinct exit codes, a killed QEMU leaves a stopped vTPM with its state,
 * and delete crypto-erases.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import Sqlite from 'better-sqlite3';
import { bootGuest, buildInitramfs, findKernel, launchGuest, resetCountOf } from './support/guest.js';
import { CLI, serveRefusal, serviceForFile, type StartedJson, type VtpmJson } from './support/service.js';

const context = serviceForFile('vtpm-life');

const EXIT = { invalid: 2, notFound: 3, conflict: 4, unauthenticated: 5 };

async function listed(): Promise<string[]> {
  return (await context.service.json<VtpmJson[]>('list')).map((v) => v.vm);
}

describe('bad input creates nothing', () => {
  const cases: Array<{ name: string; args: string[]; mentions: string[] }> = [
    {
      name: 'flavor and image disagree on the version',
      args: ['--flavor', 'hw:tpm_version=2.0', '--image', 'hw_tpm_version=1.2'],
      mentions: ['flavor hw:tpm_version=2.0', 'image hw_tpm_version=1.2'],
    },
    {
      name: 'flavor and image disagree on the model',
      args: ['--flavor', 'hw:tpm_model=tpm-tis', '--image', 'hw_tpm_version=2.0', '--image', 'hw_tpm_model=tpm-crb'],
      mentions: ['hw:tpm_model=tpm-tis', 'hw_tpm_model=tpm-crb'],
    },
    {
      name: 'tpm-crb with 1.2',
      args: ['--flavor', 'hw:tpm_version=1.2', '--flavor', 'hw:tpm_model=tpm-crb'],
      mentions: ['tpm-crb requires TPM version 2.0'],
    },
    {
      name: 'an unknown model',
      args: ['--flavor', 'hw:tpm_version=2.0', '--flavor', 'hw:tpm_model=tpm-spapr'],
      mentions: ['flavor.hw:tpm_model', 'tpm-tis, tpm-crb'],
    },
    { name: 'no version at all', args: [], mentions: ['version'] },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const vm = randomUUID();
      const result = await context.service.cli('create', '--vm', vm, ...c.args);
      assert.equal(result.code, EXIT.invalid, result.stderr);
      for (const text of c.mentions)
        assert.ok(result.stderr.includes(text), `"${result.stderr.trim()}" should mention "${text}"`);
      assert.ok(!(await listed()).includes(vm));
    });
  }

  it('a VM id that is not a UUID names the field', async () => {
    const result = await context.service.cli('create', '--vm', 'not-a-uuid', '--version', '2.0');
    assert.equal(result.code, EXIT.invalid);
    assert.match(result.stderr, /vm: expected a VM UUID/);
  });

  it('the API answers 400 with the error code and the conflicting sources', async () => {
    const token = (await readFile(join(context.service.dataDir, 'admin.token'), 'utf8')).trim();
    const response = await fetch(`${context.service.url}/v1/vtpms`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ vm: randomUUID(), flavor: { 'hw:tpm_version': '2.0' }, image: { hw_tpm_version: '1.2' } }),
    });
    assert.equal(response.status, 400);
    const body = (await response.json()) as {
      error: { code: string; details: { conflicts: Array<{ source: string }> } };
    };
    assert.equal(body.error.code, 'spec_conflict');
    assert.deepEqual(
      body.error.details.conflicts.map((c) => c.source),
      ['flavor', 'image'],
    );
  });
});

describe('the vtpm command', () => {
  it('runs as an executable, as npx and npm install -g run it', async () => {
    const { version } = JSON.parse(await readFile(new URL('../../../package.json', import.meta.url), 'utf8')) as {
      version: string;
    };
    const { stdout } = await promisify(execFile)(CLI, ['--version']);
    assert.equal(stdout.trim(), version);
  });
});

describe('the data directory', () => {
  it('a second vtpm serve on it refuses to start, naming the one that holds it', async () => {
    const before = await listed();
    const refusal = await serveRefusal(context.service.dataDir, []);
    assert.match(refusal, /data directory .* is in use by another process \(vtpm serve, pid \d+\)/);
    assert.deepEqual(await listed(), before, 'the first vtpm serve still answers, its vTPMs unchanged');
  });
});

describe('the API', () => {
  it('refuses requests without a valid token', async () => {
    for (const headers of [{}, { authorization: 'Bearer vtpm_wrong' }] as Array<Record<string, string>>) {
      const response = await fetch(`${context.service.url}/v1/vtpms`, { headers });
      assert.equal(response.status, 401);
      assert.equal(((await response.json()) as { error: { code: string } }).error.code, 'unauthenticated');
    }
    const result = await context.service.cliAs('vtpm_wrong', 'list');
    assert.equal(result.code, EXIT.unauthenticated);
  });

  it('serves its OpenAPI document', async () => {
    const document = (await (await fetch(`${context.service.url}/openapi.json`)).json()) as {
      openapi: string;
      paths: Record<string, unknown>;
    };
    assert.match(document.openapi, /^3\./);
    for (const path of [
      '/v1/vtpms',
      '/v1/vtpms/{vm}',
      '/v1/vtpms/{vm}/start',
      '/v1/vtpms/{vm}/stop',
      '/v1/vtpms/{vm}/ek',
      '/v1/hosts',
    ]) {
      assert.ok(document.paths[path], `OpenAPI lacks ${path}`);
    }
  });

  it('lists this host with its TPM traits', async () => {
    const hosts = await context.service.json<Array<{ name: string; traits: string[] }>>('hosts');
    assert.equal(hosts.length, 1);
    for (const trait of [
      'COMPUTE_SECURITY_TPM_1_2',
      'COMPUTE_SECURITY_TPM_2_0',
      'COMPUTE_SECURITY_TPM_TIS',
      'COMPUTE_SECURITY_TPM_CRB',
    ]) {
      assert.ok(hosts[0]!.traits.includes(trait), `host lacks ${trait}`);
    }
  });
});

describe('unknown VMs', () => {
  for (const command of [['show'], ['start'], ['stop'], ['delete'], ['qemu-args'], ['libvirt-xml'], ['ek']]) {
    it(`vtpm ${command[0]} of an unknown VM exits ${EXIT.notFound} and says not found`, async () => {
      const vm = randomUUID();
      const result = await context.service.cli(...command, vm);
      assert.equal(result.code, EXIT.notFound, result.stderr);
      assert.match(result.stderr, new RegExp(`${vm} not found`));
    });
  }
});

describe('lifecycle', () => {
  it('refuses a second vTPM for the same VM', async () => {
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '2.0');
    const again = await context.service.cli('create', '--vm', vm, '--version', '2.0');
    assert.equal(again.code, EXIT.conflict);
    assert.match(again.stderr, /already exists/);
  });

  it('qemu-args and libvirt-xml describe the socket, before and after start', async () => {
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '2.0', '--model', 'tpm-crb');
    const { qemu_args: args } = await context.service.json<{ qemu_args: string[] }>('qemu-args', vm);
    const beforeStart = await context.service.cli('qemu-args', vm);
    assert.match(beforeStart.stderr, /note: the vTPM of VM .* is stopped: these arguments work once `vtpm start`/);
    const { libvirt_xml: xml } = await context.service.json<{ libvirt_xml: string }>('libvirt-xml', vm);
    const started = await context.service.json<StartedJson>('start', vm);
    assert.deepEqual(args, started.qemu_args);
    assert.equal(xml, started.libvirt_xml);
    assert.ok(args.includes('tpm-crb,tpmdev=tpm0'));
    assert.ok(xml.includes(`path='${started.socket}'`) && xml.includes("<backend type='external'>"));
    assert.ok(existsSync(started.socket));
    const text = await context.service.cli('qemu-args', vm);
    assert.equal(text.stdout.trim(), args.join(' '));
    assert.equal(text.stderr, '', 'no note once it runs');
    await context.service.json('stop', vm);
    await context.service.waitForStatus(vm, 'stopped');
    assert.ok(!existsSync(started.socket), 'the socket outlived the vTPM');
  });

  it('start and stop are idempotent, saying so; a running vTPM is not deleted without --force', async () => {
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '2.0');
    const started = await context.service.json<{ socket: string }>('start', vm);
    const again = await context.service.cli('start', vm);
    assert.equal(again.code, 0);
    assert.match(again.stderr, /already running/);
    assert.match(again.stdout, new RegExp(started.socket));
    const elsewhere = await context.service.cli('start', vm, '--host', 'no-such-host');
    assert.equal(elsewhere.code, EXIT.conflict);
    const remove = await context.service.cli('delete', vm);
    assert.equal(remove.code, EXIT.conflict);
    assert.match(remove.stderr, /--force/);
    assert.equal((await context.service.json<VtpmJson>('show', vm)).status, 'running');
    assert.equal((await context.service.cli('stop', vm)).code, 0);
    const stopAgain = await context.service.cli('stop', vm);
    assert.deepEqual([stopAgain.code, /was not running/.test(stopAgain.stderr)], [0, true]);
    assert.equal((await context.service.cli('delete', '--yes', vm)).code, 0);
    assert.equal((await context.service.cli('show', vm)).code, EXIT.notFound);
  });

  it('a killed QEMU leaves the vTPM stopped with its state, and it boots again', async () => {
    const kernel = await findKernel();
    const initramfs = await buildInitramfs(context.workDir);
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '2.0');
    const first = await bootGuest({
      kernel,
      initramfs,
      qemuArgs: (await context.service.json<StartedJson>('start', vm)).qemu_args,
    });
    await context.service.waitForStatus(vm, 'stopped');

    const guest = launchGuest({
      kernel,
      initramfs,
      qemuArgs: (await context.service.json<StartedJson>('start', vm)).qemu_args,
    });
    guest.report.catch(() => undefined);
    await delay(1500);
    guest.kill('SIGKILL');
    await context.service.waitForStatus(vm, 'stopped');

    const third = await bootGuest({
      kernel,
      initramfs,
      qemuArgs: (await context.service.json<StartedJson>('start', vm)).qemu_args,
    });
    await context.service.waitForStatus(vm, 'stopped');
    assert.ok(resetCountOf(third.responses.readclock!) > resetCountOf(first.responses.readclock!));

    // The vTPM's own log tells its three runs apart, with times; swtpm's own lines hold no TPM traffic.
    const log = await readFile(join(context.service.dataDir, 'log', `${vm}.log`), 'utf8');
    const ours = log.split('\n').filter((line) => / vtpm-manager: /.test(line));
    assert.equal(ours.filter((line) => line.endsWith('starting swtpm (TPM 2.0)')).length, 3, log);
    assert.equal(ours.filter((line) => / vtpm-manager: swtpm ready, pid \d+$/.test(line)).length, 3, log);
    assert.equal(ours.filter((line) => / vtpm-manager: swtpm exited/.test(line)).length, 3, log);
    assert.ok(
      ours.every((line) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /.test(line)),
      log,
    );
    assert.doesNotMatch(log, /Cmd: length/, 'no TPM or control command is dumped');
  });

  it('delete destroys the secret and the state (crypto-erase)', async () => {
    const vm = randomUUID();
    const secretsDir = join(context.service.dataDir, 'keys', 'secrets');
    const secretsBefore = (await readdir(secretsDir)).length;
    await context.service.json('create', '--vm', vm, '--version', '1.2');
    assert.equal((await readdir(secretsDir)).length, secretsBefore + 1);
    await context.service.json('start', vm);
    await context.service.json('stop', vm);
    assert.ok(existsSync(join(context.service.dataDir, 'tpm', vm)), 'a stopped vTPM keeps a working copy on its host');
    assert.equal((await context.service.json<unknown[]>('history', vm)).length, 1);
    // Crypto-erase is asked for: with no terminal to ask on, a script must say --yes.
    const unconfirmed = await context.service.cli('delete', vm);
    assert.equal(unconfirmed.code, EXIT.invalid);
    assert.match(unconfirmed.stderr, /crypto-erase the vTPM of VM .*\(no terminal to ask on: pass --yes\)/);
    assert.equal((await context.service.json<VtpmJson>('show', vm)).status, 'stopped');
    const deleted = await context.service.json<{ deleted: boolean }>('delete', '--yes', vm);
    assert.equal(deleted.deleted, true);
    assert.equal((await readdir(secretsDir)).length, secretsBefore);
    assert.ok(!existsSync(join(context.service.dataDir, 'tpm', vm)));
    assert.equal((await context.service.cli('ek', vm)).code, EXIT.notFound);
    assert.equal((await context.service.cli('history', vm)).code, EXIT.notFound);
    const database = new Sqlite(join(context.service.dataDir, 'vtpm.sqlite'), { readonly: true });
    try {
      assert.deepEqual(database.prepare('SELECT COUNT(*) AS n FROM state_generations WHERE vm = ?').get(vm), { n: 0 });
    } finally {
      database.close();
    }
  });
});
