/**
 * vTPM secrets in a real OpenStack Barbican, in the owner's project as Nova
 * keeps them; the service across a restart; and Barbican going away: running
 * vTPMs keep running and syncing, new operations that need a secret fail fast
 * with "key manager unavailable", and work again, without a restart, once it
 * is back.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { Barbican } from './support/barbican.js';
import { ServiceUnderTest, temporaryDir, type VtpmJson } from './support/service.js';

let workDir = '';
let barbican: Barbican;
let service: ServiceUnderTest;
let serveArgs: string[] = [];
const tokens: Record<string, string> = {};

before(async () => {
  workDir = await temporaryDir('vtpm-barbican');
  barbican = await Barbican.create(workDir);
  serveArgs = ['--pool-size', '0', '--key-manager', 'barbican', '--barbican-url', barbican.url];
  service = await ServiceUnderTest.start(join(workDir, 'data'), serveArgs);
  for (const [name, project] of [['alice', 'p1']] as const) {
    tokens[name] = (await service.json<{ token: string }>('user', 'create', name, '--project', project, '--role', 'member')).token;
  }
});

after(async () => {
  for (const vtpm of await service.json<VtpmJson[]>('list').catch(() => [])) await service.cli('delete', '--force', vtpm.vm);
  await service.stop();
  await barbican.stop();
  await rm(workDir, { recursive: true, force: true });
});

const as = (user: string, ...args: string[]) => service.json<VtpmJson>('--token', tokens[user]!, ...args);

describe('the Barbican key manager', () => {
  it("keeps each vTPM's secret in Barbican, in its owner's project", async () => {
    const vm = randomUUID();
    await as('alice', 'create', '--vm', vm, '--version', '2.0');
    assert.ok((await barbican.secretNames('p1')).includes(`vtpm-${vm}`), 'the secret is in project p1');
    assert.ok(!(await barbican.secretNames('p2')).includes(`vtpm-${vm}`), 'and not in another project');
    assert.equal((await as('alice', 'start', vm)).status, 'running');
    await as('alice', 'stop', vm);

    await service.stop();
    service = await ServiceUnderTest.start(join(workDir, 'data'), serveArgs);
    assert.equal((await as('alice', 'start', vm)).status, 'running', 'the secret is fetched from Barbican again after a restart');
    await as('alice', 'stop', vm);

    await service.json('delete', vm);
    assert.ok(!(await barbican.secretNames('p1')).includes(`vtpm-${vm}`), 'delete removes the secret from Barbican');
  });

  it('with Barbican down, running vTPMs keep syncing, new work fails fast as "key manager unavailable", and works again when it is back', async () => {
    const vm = randomUUID();
    await as('alice', 'create', '--vm', vm, '--version', '2.0');
    await as('alice', 'start', vm);
    await barbican.stop();
    try {
      // The running vTPM's state changes (written as swtpm writes it) and still reaches the vault.
      const before = (await service.json<unknown[]>('history', vm)).length;
      const stateDir = join(service.dataDir, 'tpm', vm);
      await writeFile(join(stateDir, 'TMP2-00.permall'), randomBytes(6172));
      await rename(join(stateDir, 'TMP2-00.permall'), join(stateDir, 'tpm2-00.permall'));
      const deadline = Date.now() + 15_000;
      while ((await service.json<unknown[]>('history', vm)).length === before && Date.now() < deadline) await delay(100);
      assert.equal((await service.json<unknown[]>('history', vm)).length, before + 1, 'the change was committed while Barbican was down');
      assert.equal((await service.json<VtpmJson>('show', vm)).status, 'running');

      const refused = await service.cli('--token', tokens.alice!, 'create', '--vm', randomUUID(), '--version', '2.0');
      assert.equal(refused.code, 6, refused.stderr);
      assert.match(refused.stderr, /key manager unavailable: Barbican at http:\/\/127\.0\.0\.1:\d+ cannot be reached/);
    } finally {
      await barbican.start();
    }
    const again = randomUUID();
    assert.equal((await as('alice', 'create', '--vm', again, '--version', '2.0')).vm, again, 'no restart needed once Barbican is back');
    await as('alice', 'stop', vm);
  });

  it('says where the key-encryption keys are rotated', async () => {
    const rotate = await service.cli('keys', 'rotate');
    assert.equal(rotate.code, 6);
    assert.match(rotate.stderr, /rotated in Barbican itself/);
  });
});
