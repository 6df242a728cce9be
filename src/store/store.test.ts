/**
 * The store's contract, written once and run against every dialect in
 * DIALECTS: SQLite, and a real PostgreSQL server started for this file. Each
 * test gets an empty database of its own.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, beforeEach, describe, it } from 'node:test';
import { AlreadyExistsError } from '../errors.js';
import {
  DEPLOYMENT_PROJECT,
  SECRET_SETTINGS,
  Store,
  type NewGeneration,
  type NewVtpm,
  type PoolEntry,
} from './index.js';
import { postgresqlDialect } from './postgresql/postgresql-dialect.js';
import { sqliteDialect } from './sqlite/sqlite-dialect.js';
import { PostgresServer } from './testing/postgresql-server.js';

interface DialectUnderTest {
  name: string;
  /** A store over an empty database. */
  open: () => Promise<Store>;
}

const roots: string[] = [];
let postgres: PostgresServer | undefined;
after(async () => {
  await Promise.all(roots.map((root) => rm(root, { recursive: true, force: true })));
  await postgres?.destroy();
});

const DIALECTS: DialectUnderTest[] = [
  {
    name: 'sqlite',
    open: async () => {
      const root = await mkdtemp(join(tmpdir(), 'vtpm-store-test-'));
      roots.push(root);
      return Store.open(sqliteDialect(join(root, 'vtpm.sqlite')));
    },
  },
  {
    name: 'postgresql',
    open: async () => {
      postgres ??= await PostgresServer.start();
      return Store.open(postgresqlDialect(postgres.uri(await postgres.createDatabase())));
    },
  },
];

const vtpm = (vm: string, overrides: Partial<NewVtpm> = {}): NewVtpm => ({
  vm,
  project: 'p1',
  version: '2.0',
  model: 'tpm-crb',
  host: 'host-a',
  status: 'stopped',
  firmware: 'uefi',
  secure_boot: true,
  secret_ref: `secret-${vm}`,
  spec_claims: { flavor: { tpm: '2.0' }, options: ['x'] },
  ek_certificates: Buffer.from([1, 2, 3]),
  socket: null,
  secret_security: 'user',
  migrating_to: null,
  instance: null,
  migrating_instance: null,
  ...overrides,
});

const generation = (vm: string, n: number, overrides: Partial<NewGeneration> = {}): NewGeneration => ({
  vm,
  kind: 'tpm',
  generation: n,
  previous_digest: `d${n - 1}`,
  digest: `d${n}`,
  size: 10 + n,
  reason: n === 1 ? 'create' : 'sync',
  wrapped_key: Buffer.from(`key-${n}`),
  ciphertext: Buffer.from(`ciphertext-${n}`),
  ...overrides,
});

const poolEntry = (id: string, overrides: Partial<PoolEntry> = {}): PoolEntry => ({
  id,
  version: '2.0',
  secret_ref: `pool-secret-${id}`,
  state: Buffer.from(`state-${id}`),
  ek_certificates: Buffer.from(`ek-${id}`),
  ...overrides,
});

const sealAs =
  (operation: string, vm: string | null, project: string | null, actorProject = 'p1') =>
  (previousHash: string) => ({
    at: new Date().toISOString(),
    actor: 'alice',
    actor_project: actorProject,
    operation,
    vm,
    project,
    result: 'ok',
    detail: '{}',
    previous_hash: previousHash,
    hash: `hash-of-${operation}`,
  });

for (const dialect of DIALECTS) {
  describe(`store on ${dialect.name}`, () => {
    let store: Store;
    beforeEach(async () => {
      store = await dialect.open();
    });
    afterEach(() => store.close());

    describe('vtpms', () => {
      it('inserts a vTPM and reads it back with its columns decoded', async () => {
        const inserted = await store.vtpms.insert(vtpm('vm-1'));
        assert.equal(inserted.created_at, inserted.updated_at);
        const read = await store.vtpms.get('vm-1');
        assert.deepEqual(read, inserted);
        assert.equal(read?.secure_boot, true);
        assert.deepEqual(read?.spec_claims, { flavor: { tpm: '2.0' }, options: ['x'] });
        assert.ok(Buffer.isBuffer(read?.ek_certificates));
        assert.deepEqual(read?.ek_certificates, Buffer.from([1, 2, 3]));
        assert.equal(await store.vtpms.get('vm-missing'), undefined);
      });

      it('lists in creation order, by host and by status', async () => {
        await store.vtpms.insert(vtpm('vm-b', { host: 'host-a', status: 'running' }));
        await store.vtpms.insert(vtpm('vm-a', { host: 'host-b', status: 'stopped', secure_boot: false }));
        await store.vtpms.insert(vtpm('vm-c', { host: 'host-a', status: 'stopped', ek_certificates: null }));
        const names = (records: Array<{ vm: string }>) => records.map((r) => r.vm);
        const all = await store.vtpms.list();
        // Creation order first; two rows of the same millisecond fall back to the VM name.
        const expected = [...all].sort((x, y) => x.created_at.localeCompare(y.created_at) || x.vm.localeCompare(y.vm));
        assert.deepEqual(names(all), names(expected));
        assert.deepEqual(new Set(names(all)), new Set(['vm-a', 'vm-b', 'vm-c']));
        assert.deepEqual(new Set(names(await store.vtpms.list({ host: 'host-a' }))), new Set(['vm-b', 'vm-c']));
        assert.deepEqual(names(await store.vtpms.list({ statuses: ['running'] })), ['vm-b']);
        const stoppedOnA = await store.vtpms.list({ host: 'host-a', statuses: ['stopped', 'creating'] });
        assert.deepEqual(names(stoppedOnA), ['vm-c']);
        assert.deepEqual(await store.vtpms.list({ statuses: [] }), []);
        assert.equal((await store.vtpms.get('vm-a'))?.secure_boot, false);
        assert.equal((await store.vtpms.get('vm-c'))?.ek_certificates, null);
      });

      it('refuses a second vTPM for the same VM with AlreadyExistsError', async () => {
        await store.vtpms.insert(vtpm('vm-1'));
        await assert.rejects(
          store.vtpms.insert(vtpm('vm-1', { project: 'p2' })),
          (error: unknown) => error instanceof AlreadyExistsError && error.message.includes('vm-1'),
        );
        assert.equal((await store.vtpms.get('vm-1'))?.project, 'p1');
      });

      it('updates compare-and-set on the status, and changes nothing when the status is not expected', async () => {
        const inserted = await store.vtpms.insert(vtpm('vm-1', { status: 'stopped' }));
        const refused = await store.vtpms.update('vm-1', { status: 'running', socket: '/run/s' }, ['starting']);
        assert.equal(refused, undefined);
        assert.deepEqual(await store.vtpms.get('vm-1'), inserted);

        const patch = { status: 'starting', socket: '/run/s', secure_boot: false } as const;
        const updated = await store.vtpms.update('vm-1', patch, ['stopped']);
        assert.equal(updated?.status, 'starting');
        assert.equal(updated?.socket, '/run/s');
        assert.equal(updated?.secure_boot, false);
        assert.equal(updated?.host, 'host-a', 'columns outside the patch are kept');
        assert.deepEqual(await store.vtpms.get('vm-1'), updated);

        // null is a value to set; undefined leaves the column alone.
        const cleared = await store.vtpms.update('vm-1', { socket: null, migrating_to: 'host-b', host: undefined });
        assert.equal(cleared?.socket, null);
        assert.equal(cleared?.migrating_to, 'host-b');
        assert.equal(cleared?.host, 'host-a');
        assert.equal(await store.vtpms.update('vm-missing', { status: 'running' }), undefined);
      });

      it('deletes a vTPM', async () => {
        await store.vtpms.insert(vtpm('vm-1'));
        await store.vtpms.delete('vm-1');
        assert.equal(await store.vtpms.get('vm-1'), undefined);
      });

      it('counts vTPMs per host, and the running ones', async () => {
        await store.vtpms.insert(vtpm('vm-1', { host: 'host-a', status: 'running' }));
        await store.vtpms.insert(vtpm('vm-2', { host: 'host-a', status: 'stopped' }));
        await store.vtpms.insert(vtpm('vm-3', { host: 'host-b', status: 'running' }));
        const counts = await store.vtpms.countByHost();
        assert.deepEqual(Object.fromEntries(counts), {
          'host-a': { total: 2, running: 1 },
          'host-b': { total: 1, running: 1 },
        });
      });
    });

    describe('generations', () => {
      it('lets exactly one of concurrent writers commit a generation number', async () => {
        assert.equal(await store.generations.append(generation('vm-1', 1)), true);
        for (const n of [1, 2]) {
          const writers = Array.from({ length: 8 }, (_, i) =>
            store.generations.append(generation('vm-1', n + 1, { digest: `d${n + 1}-writer-${i}` })),
          );
          const committed = (await Promise.all(writers)).filter(Boolean);
          assert.equal(committed.length, 1);
        }
        const head = await store.generations.head('vm-1', 'tpm');
        assert.equal(head?.generation, 3);
        assert.equal((await store.generations.get('vm-1', 'tpm', 3))?.digest, head?.digest);
        assert.equal((await store.generations.list('vm-1')).length, 3);
      });

      it('lets exactly one of concurrent writers commit the first generation', async () => {
        const writers = Array.from({ length: 8 }, (_, i) =>
          store.generations.append(generation('vm-2', 1, { digest: `d1-writer-${i}` })),
        );
        assert.equal((await Promise.all(writers)).filter(Boolean).length, 1);
        assert.equal((await store.generations.list('vm-2')).length, 1);
      });

      it('appends generations, moving the head, and hands back what was stored', async () => {
        assert.equal(await store.generations.head('vm-1', 'tpm'), undefined);
        assert.equal(await store.generations.append(generation('vm-1', 1)), true);
        assert.equal(await store.generations.append(generation('vm-1', 2)), true);
        assert.deepEqual(await store.generations.head('vm-1', 'tpm'), { generation: 2, digest: 'd2' });
        const read = await store.generations.get('vm-1', 'tpm', 2);
        const { created_at: createdAt, ...stored } = read!;
        assert.deepEqual(stored, generation('vm-1', 2));
        assert.ok(Buffer.isBuffer(read?.wrapped_key) && Buffer.isBuffer(read.ciphertext));
        assert.match(createdAt, /^\d{4}-\d\d-\d\dT/);
        assert.equal(await store.generations.get('vm-1', 'tpm', 3), undefined);
        assert.equal(await store.generations.get('vm-1', 'nvram', 2), undefined);
      });

      it('refuses an append whose number is not the head plus one, leaving the head as it was', async () => {
        await store.generations.append(generation('vm-1', 1));
        await store.generations.append(generation('vm-1', 2));
        assert.equal(await store.generations.append(generation('vm-1', 2, { digest: 'other' })), false, 'stale');
        assert.equal(await store.generations.append(generation('vm-1', 4)), false, 'ahead');
        assert.equal(await store.generations.append(generation('vm-2', 2)), false, 'no head yet');
        assert.deepEqual(await store.generations.head('vm-1', 'tpm'), { generation: 2, digest: 'd2' });
        assert.equal((await store.generations.get('vm-1', 'tpm', 2))?.digest, 'd2');
        assert.equal(await store.generations.get('vm-1', 'tpm', 4), undefined);
        assert.equal(await store.generations.head('vm-2', 'tpm'), undefined);
      });

      it('lists per kind, newest first, without the encrypted columns', async () => {
        for (const n of [1, 2, 3]) await store.generations.append(generation('vm-1', n));
        for (const n of [1, 2]) await store.generations.append(generation('vm-1', n, { kind: 'nvram' }));
        await store.generations.append(generation('vm-2', 1));
        const listed = await store.generations.list('vm-1');
        assert.deepEqual(
          listed.map((g) => [g.kind, g.generation]),
          [
            ['nvram', 2],
            ['nvram', 1],
            ['tpm', 3],
            ['tpm', 2],
            ['tpm', 1],
          ],
        );
        assert.ok(listed.every((g) => !('ciphertext' in g) && !('wrapped_key' in g)));
        assert.deepEqual(Object.keys(listed[0]!).sort(), [
          'created_at',
          'digest',
          'generation',
          'kind',
          'previous_digest',
          'reason',
          'size',
          'vm',
        ]);
      });

      it('removes the generations it is given, of one kind only', async () => {
        for (const n of [1, 2, 3, 4]) await store.generations.append(generation('vm-1', n));
        await store.generations.append(generation('vm-1', 1, { kind: 'nvram' }));
        await store.generations.remove('vm-1', 'tpm', [1, 3]);
        const kept = (await store.generations.list('vm-1')).map((g) => [g.kind, g.generation]);
        assert.deepEqual(kept, [
          ['nvram', 1],
          ['tpm', 4],
          ['tpm', 2],
        ]);
        assert.deepEqual(await store.generations.head('vm-1', 'tpm'), { generation: 4, digest: 'd4' });
      });

      it('forgets one kind, or all of a VM', async () => {
        await store.generations.append(generation('vm-1', 1));
        await store.generations.append(generation('vm-1', 1, { kind: 'nvram' }));
        await store.generations.append(generation('vm-2', 1));
        await store.generations.forget('vm-1', 'nvram');
        assert.equal(await store.generations.head('vm-1', 'nvram'), undefined);
        assert.deepEqual(
          (await store.generations.list('vm-1')).map((g) => g.kind),
          ['tpm'],
        );
        // A forgotten kind starts again at 1.
        assert.equal(await store.generations.append(generation('vm-1', 1, { kind: 'nvram' })), true);
        await store.generations.forget('vm-1');
        assert.deepEqual(await store.generations.list('vm-1'), []);
        assert.equal(await store.generations.head('vm-1', 'tpm'), undefined);
        assert.equal((await store.generations.list('vm-2')).length, 1, 'other VMs are untouched');
      });
    });

    describe('hosts', () => {
      it('registers a remote host, returning the credential it replaces', async () => {
        assert.equal(await store.hosts.registerRemote('h1', 'https://h1:1', 'ref-1'), undefined);
        assert.equal(await store.hosts.registerRemote('h1', 'https://h1:2', 'ref-2'), 'ref-1');
        const [host] = await store.hosts.list();
        assert.equal(host?.agent_url, 'https://h1:2');
        assert.equal(host?.agent_secret_ref, 'ref-2');
        assert.deepEqual(host?.traits, []);
      });

      it("upserts what an agent reports, keeping a remote host's agent URL and credential", async () => {
        await store.hosts.registerRemote('h1', 'https://h1:1', 'ref-1');
        await store.hosts.upsert({ name: 'h1', traits: ['sev'], capabilities: { swtpm: '0.9' }, max_vtpms: 40 });
        await store.hosts.upsert({ name: 'h0', traits: [], capabilities: {}, max_vtpms: null });
        await store.hosts.upsert({ name: 'h0', traits: ['a', 'b'], capabilities: { qemu: '9' }, max_vtpms: null });
        const hosts = await store.hosts.list();
        assert.deepEqual(
          hosts.map((h) => h.name),
          ['h0', 'h1'],
        );
        assert.deepEqual(
          hosts.map((h) => [h.traits, h.capabilities, h.agent_url, h.agent_secret_ref, h.max_vtpms]),
          [
            [['a', 'b'], { qemu: '9' }, null, null, null],
            [['sev'], { swtpm: '0.9' }, 'https://h1:1', 'ref-1', 40],
          ],
        );
      });
    });

    describe('identity', () => {
      const at = '2030-01-01T00:00:00.000Z';

      it('finds the user a token stands for, until the token expires', async () => {
        await store.identity.insertUser({ name: 'alice', project: 'p1', roles: ['member', 'vtpm-operator'] });
        const token = await store.identity.insertToken({ user_name: 'alice', token_hash: 'h-1', expires_at: at });
        assert.equal(token.user_name, 'alice');
        assert.equal(token.revoked_at, null);
        assert.ok(!('token_hash' in token));
        const user = await store.identity.findUserByTokenHash('h-1', '2029-12-31T23:59:59.000Z');
        assert.deepEqual(user, {
          name: 'alice',
          project: 'p1',
          roles: ['member', 'vtpm-operator'],
          created_at: user?.created_at,
        });
        assert.equal(await store.identity.findUserByTokenHash('h-1', at), undefined, 'expired');
        assert.equal(await store.identity.findUserByTokenHash('h-unknown', '2000-01-01T00:00:00.000Z'), undefined);
        await store.identity.insertToken({ user_name: 'alice', token_hash: 'h-forever', expires_at: null });
        const holder = await store.identity.findUserByTokenHash('h-forever', '2999-01-01T00:00:00.000Z');
        assert.equal(holder?.name, 'alice');
      });

      it('does not find a revoked token', async () => {
        await store.identity.insertUser({ name: 'alice', project: 'p1', roles: ['member'] });
        const token = await store.identity.insertToken({ user_name: 'alice', token_hash: 'h-1', expires_at: null });
        assert.equal(await store.identity.revokeToken(token.id), true);
        assert.equal(await store.identity.revokeToken(token.id), false, 'already revoked');
        assert.equal(await store.identity.revokeToken(token.id + 100), false, 'no such token');
        assert.equal(await store.identity.findUserByTokenHash('h-1', at), undefined);
        assert.notEqual((await store.identity.listTokens('alice'))[0]?.revoked_at, null);
      });

      it('refuses a second user of the same name', async () => {
        await store.identity.insertUser({ name: 'alice', project: 'p1', roles: ['member'] });
        const again = store.identity.insertUser({ name: 'alice', project: 'p2', roles: ['admin'] });
        await assert.rejects(again, AlreadyExistsError);
        assert.deepEqual(
          (await store.identity.listUsers()).map((u) => [u.name, u.project]),
          [['alice', 'p1']],
        );
      });

      it("deletes a user and revokes its tokens, leaving other users' tokens", async () => {
        await store.identity.insertUser({ name: 'alice', project: 'p1', roles: ['member'] });
        await store.identity.insertUser({ name: 'bob', project: 'p2', roles: ['admin'] });
        await store.identity.insertToken({ user_name: 'alice', token_hash: 'a-1', expires_at: null });
        await store.identity.insertToken({ user_name: 'alice', token_hash: 'a-2', expires_at: at });
        await store.identity.insertToken({ user_name: 'bob', token_hash: 'b-1', expires_at: null });
        assert.equal(await store.identity.deleteUser('alice'), true);
        assert.equal(await store.identity.deleteUser('alice'), false);
        assert.equal(await store.identity.getUser('alice'), undefined);
        const tokens = await store.identity.listTokens('alice');
        assert.equal(tokens.length, 2);
        assert.ok(tokens.every((t) => t.revoked_at !== null));
        assert.deepEqual(
          (await store.identity.listTokens()).map((t) => [t.user_name, t.revoked_at === null]),
          [
            ['alice', false],
            ['alice', false],
            ['bob', true],
          ],
        );
        assert.equal((await store.identity.findUserByTokenHash('b-1', at))?.name, 'bob');
      });

      it('revokes every token of a user', async () => {
        await store.identity.insertUser({ name: 'alice', project: 'p1', roles: ['member'] });
        await store.identity.insertToken({ user_name: 'alice', token_hash: 'a-1', expires_at: null });
        await store.identity.revokeTokensOf('alice');
        assert.equal(await store.identity.findUserByTokenHash('a-1', at), undefined);
        assert.equal((await store.identity.getUser('alice'))?.name, 'alice', 'the user stays');
      });
    });

    describe('audit', () => {
      it('chains each event to the hash of the one before', async () => {
        const seen: string[] = [];
        const watched = (operation: string) => (previous: string) => {
          seen.push(previous);
          return sealAs(operation, 'vm-1', 'p1')(previous);
        };
        const first = await store.audit.append(watched('create'));
        const second = await store.audit.append(watched('start'));
        assert.deepEqual(seen, ['', 'hash-of-create']);
        assert.equal(first.previous_hash, '');
        assert.equal(second.previous_hash, first.hash);
        assert.ok(second.seq > first.seq);
        assert.deepEqual(await store.audit.list({ limit: 10 }), [first, second]);
      });

      it('chains concurrent appends into one line: no two events follow the same one', async () => {
        await Promise.all(Array.from({ length: 50 }, (_, i) => store.audit.append(sealAs(`op-${i}`, 'vm-1', 'p1'))));
        const events = await store.audit.list({ limit: 100 });
        assert.equal(events.length, 50);
        for (const [i, event] of events.entries())
          assert.equal(event.previous_hash, i === 0 ? '' : events[i - 1]?.hash);
      });

      it('lists from a sequence number, by VM or project, newest first when asked', async () => {
        const a = await store.audit.append(sealAs('a', 'vm-1', 'p1'));
        const b = await store.audit.append(sealAs('b', 'vm-2', 'p2', 'p2'));
        const c = await store.audit.append(sealAs('c', null, null, 'p2'));
        const ops = (events: Array<{ operation: string }>) => events.map((e) => e.operation);
        assert.deepEqual(ops(await store.audit.list({ afterSeq: a.seq, limit: 10 })), ['b', 'c']);
        assert.deepEqual(ops(await store.audit.list({ vm: 'vm-2', limit: 10 })), ['b']);
        assert.deepEqual(ops(await store.audit.list({ project: 'p2', limit: 10 })), ['b', 'c']);
        assert.deepEqual(ops(await store.audit.list({ limit: 2, newestFirst: true })), ['c', 'b']);
        assert.deepEqual(ops(await store.audit.list({ limit: 1 })), ['a']);
        assert.equal(b.seq < c.seq, true);
      });
    });

    describe('pool', () => {
      it('claims the oldest entry of a version and inserts its vTPM in one transaction', async () => {
        await store.pool.add(poolEntry('e-1'));
        await store.pool.add(poolEntry('e-3', { version: '1.2' }));
        await new Promise((resolve) => setTimeout(resolve, 5));
        await store.pool.add(poolEntry('e-2'));
        assert.equal(await store.pool.count('2.0'), 2);
        const claimed = await store.pool.claim('2.0', (entry) =>
          vtpm('vm-1', { secret_ref: entry.secret_ref, status: 'creating' }),
        );
        assert.deepEqual(claimed, poolEntry('e-1'));
        assert.ok(Buffer.isBuffer(claimed?.state) && Buffer.isBuffer(claimed.ek_certificates));
        assert.equal(await store.pool.count('2.0'), 1);
        assert.equal(await store.pool.count('1.2'), 1);
        const created = await store.vtpms.get('vm-1');
        assert.equal(created?.secret_ref, 'pool-secret-e-1');
        assert.equal(created?.status, 'creating');
      });

      it('returns undefined from an empty pool, inserting nothing', async () => {
        let asked = false;
        const claimed = await store.pool.claim('2.0', (entry) => {
          asked = true;
          return vtpm('vm-1', { secret_ref: entry.secret_ref });
        });
        assert.equal(claimed, undefined);
        assert.equal(asked, false);
        assert.deepEqual(await store.vtpms.list(), []);
      });

      it('rolls the claim back when the vTPM cannot be inserted: the entry stays', async () => {
        await store.vtpms.insert(vtpm('vm-1'));
        await store.pool.add(poolEntry('e-1'));
        const claim = store.pool.claim('2.0', (entry) => vtpm('vm-1', { secret_ref: entry.secret_ref }));
        await assert.rejects(claim, AlreadyExistsError);
        assert.equal(await store.pool.count('2.0'), 1);
        assert.equal((await store.vtpms.get('vm-1'))?.secret_ref, 'secret-vm-1');
        const again = await store.pool.claim('2.0', () => vtpm('vm-2'));
        assert.deepEqual(again, poolEntry('e-1'), 'the entry is claimable again');
      });
    });

    describe('secrets', () => {
      async function useEverywhere(ref: (place: string) => string): Promise<void> {
        await store.vtpms.insert(vtpm('vm-1', { secret_ref: ref('vtpm'), project: 'p9' }));
        await store.pool.add(poolEntry('e-1', { secret_ref: ref('pool') }));
        await store.settings.setOnce(SECRET_SETTINGS.caRootKeyPassword, ref('setting'));
        await store.settings.setOnce('not.a.secret', ref('plain setting'));
        await store.hosts.registerRemote('h1', 'https://h1', ref('host'));
        await store.hosts.upsert({ name: 'h0', traits: [], capabilities: {}, max_vtpms: null });
      }

      it('lists every use, with the label and project its secret is stored under', async () => {
        await useEverywhere((place) => `ref-${place}`);
        assert.deepEqual(await store.secrets.listUses(), [
          { ref: 'ref-vtpm', label: 'vtpm-vm-1', project: 'p9' },
          { ref: 'ref-pool', label: 'vtpm-pool-e-1', project: DEPLOYMENT_PROJECT },
          { ref: 'ref-setting', label: SECRET_SETTINGS.caRootKeyPassword, project: DEPLOYMENT_PROJECT },
          { ref: 'ref-host', label: 'vtpm-host-agent-h1', project: DEPLOYMENT_PROJECT },
        ]);
        assert.equal(await store.secrets.isInUse('ref-pool'), true);
        assert.equal(await store.secrets.isInUse('ref-plain setting'), false, 'only settings that name secrets count');
      });

      it('replaces a reference in every place at once', async () => {
        await useEverywhere(() => 'shared');
        assert.equal(await store.secrets.replaceRef('shared', 'renewed'), 4);
        assert.deepEqual(
          (await store.secrets.listUses()).map((use) => use.ref),
          Array(4).fill('renewed'),
        );
        assert.equal(await store.secrets.isInUse('shared'), false);
        assert.equal(await store.secrets.isInUse('renewed'), true);
        assert.equal(await store.settings.get('not.a.secret'), 'shared', 'a setting that names no secret is left');
        assert.equal(await store.secrets.replaceRef('shared', 'again'), 0);
      });

      it('journals replacements until they are forgotten', async () => {
        await store.secrets.recordReplacement('old-1', 'new-1');
        await store.secrets.recordReplacement('old-2', 'new-2');
        const pending = await store.secrets.listReplacements();
        const pairs = new Set(pending.map((r) => `${r.old_ref}>${r.new_ref}`));
        assert.deepEqual(pairs, new Set(['old-1>new-1', 'old-2>new-2']));
        await store.secrets.forgetReplacement('old-1');
        assert.deepEqual(await store.secrets.listReplacements(), [{ old_ref: 'old-2', new_ref: 'new-2' }]);
      });
    });

    describe('settings', () => {
      it('keeps the first value written', async () => {
        assert.equal(await store.settings.get('k'), undefined);
        assert.equal(await store.settings.setOnce('k', 'first'), 'first');
        assert.equal(await store.settings.setOnce('k', 'second'), 'first');
        assert.equal(await store.settings.get('k'), 'first');
      });
    });
  });
}
