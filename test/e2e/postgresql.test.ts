/**
 * The service on PostgreSQL, as a fleet runs it: a real primary with a
 * synchronous standby, `vtpm serve --db` naming both with
 * target_session_attrs=read-write, and a real guest whose NV write the vault
 * acknowledged. The primary dies (immediate shutdown) and the standby is
 * promoted: the same service process carries on against the new primary
 * without a restart, and the guest boots again and reads its NV index, so no
 * acknowledged generation was lost.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { PostgresServer } from '../../src/store/testing/postgresql-server.js';
import { buildInitramfs, findKernel, GUEST_NV_DATA, responseCode } from './support/guest.js';
import { bootNvGuest, type CliResult, ServiceUnderTest, serveRefusal, temporaryDir } from './support/service.js';

let workDir = '';
let kernel = '';
let initramfs = '';
let primary: PostgresServer | undefined;
let standby: PostgresServer | undefined;
let service: ServiceUnderTest | undefined;

before(async () => {
  workDir = await temporaryDir('vtpm-e2e-postgresql-');
  kernel = await findKernel();
  initramfs = await buildInitramfs(join(workDir, 'initramfs'));
  primary = await PostgresServer.start({ standbyName: 'standby1' });
  standby = await primary.standby('standby1');
  const synchronous = await primary.query<{ sync_state: string }>(
    'postgres',
    "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'",
  );
  assert.deepEqual(synchronous, [{ sync_state: 'sync' }], 'the standby replicates synchronously');
  await primary.query('postgres', 'CREATE DATABASE vtpm');
});

after(async () => {
  if (service) {
    for (const { vm } of await service.json<Array<{ vm: string }>>('list').catch(() => []))
      await service.cli('delete', '--force', '--yes', vm);
    await service.stop();
  }
  await primary?.destroy();
  await standby?.destroy();
  if (workDir) await rm(workDir, { recursive: true, force: true });
});

/** A request the service answers 503 while it moves to the new primary is tried again, as the error says. */
async function untilAnswered(request: () => Promise<CliResult>): Promise<CliResult> {
  for (let attempt = 0; ; attempt += 1) {
    const result = await request();
    if (result.code === 0 || attempt === 20 || !/database_unavailable|try again/.test(result.stderr)) return result;
    await delay(500);
  }
}

describe('vtpm serve on PostgreSQL', () => {
  it('keeps every acknowledged generation through the primary failing over to its synchronous standby', async () => {
    assert.ok(primary && standby);
    const uri =
      `postgresql://postgres@127.0.0.1:${primary.port},127.0.0.1:${standby.port}/vtpm` +
      '?target_session_attrs=read-write&connect_timeout=2';
    service = await ServiceUnderTest.start(join(workDir, 'data'), ['--pool-size', '0', '--db', uri]);
    const tables = await primary.query<{ n: string }>(
      'vtpm',
      "SELECT count(*) AS n FROM information_schema.tables WHERE table_name IN ('vtpms', 'state_generations')",
    );
    assert.equal(tables[0]?.n, '2', 'the service migrated the PostgreSQL database, not a file');

    const vm = randomUUID();
    await service.json('create', '--vm', vm, '--version', '2.0');
    const first = await bootNvGuest(service, vm, { kernel, initramfs });
    assert.equal(responseCode(first.responses['3-write']!), 0, 'the guest wrote its NV index');
    const before = await service.json<Array<{ kind: string; generation: number }>>('history', vm);
    const replicated = await standby.query<{ n: string }>(
      'vtpm',
      `SELECT count(*) AS n FROM state_generations WHERE vm = '${vm}'`,
    );
    assert.equal(Number(replicated[0]?.n), before.length, 'the standby has every generation the primary acknowledged');

    await primary.kill();
    await standby.promote();

    const history = await untilAnswered(() => service!.cli('--json', 'history', vm));
    assert.equal(history.code, 0, history.stderr);
    assert.deepEqual(JSON.parse(history.stdout), before, 'the promoted standby has the same history');
    const again = await bootNvGuest(service, vm, { kernel, initramfs });
    assert.ok(
      again.responses['1-data']!.includes(GUEST_NV_DATA),
      `the guest reads its NV index after the failover: ${again.responses['1-data']!.toString('hex')}`,
    );
    const after = await service.json<Array<{ generation: number }>>('history', vm);
    assert.ok(after.length > before.length, 'the second run committed new generations to the new primary');
    const onNewPrimary = await standby.query<{ in_recovery: boolean }>(
      'vtpm',
      'SELECT pg_is_in_recovery() AS in_recovery',
    );
    assert.deepEqual(onNewPrimary, [{ in_recovery: false }]);
  });

  it('refuses a --db that is not a PostgreSQL connection string, naming the field', async () => {
    const stderr = await serveRefusal(join(workDir, 'refused'), ['--db', 'mysql://db/vtpm']);
    assert.match(stderr, /--db: expected a postgresql:\/\/ connection string/);
    const parameter = await serveRefusal(join(workDir, 'refused'), ['--db', 'postgresql://db/vtpm?sslcert=x']);
    assert.match(parameter, /--db parameter sslcert: expected one of/);
  });
});
