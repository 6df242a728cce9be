/**
 * Owners, roles and the audit log, through the real CLI and API: members
 * reach their own project's vTPMs only (another project's answers "not
 * found", word for word as a missing one), an admin cannot use a secret bound
 * to its owner, a vtpm-operator acts on vTPMs whose owners allowed it,
 * expired and revoked tokens are refused, every state-changing request and
 * secret read is in a hash-chained, append-only audit log that finds
 * tampering, and no token or passphrase ever shows in logs, errors or audit.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { chmod, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import Sqlite from 'better-sqlite3';
import {
  CLI,
  serviceForFile,
  ServiceUnderTest,
  temporaryDir,
  type CliResult,
  type VtpmJson,
} from './support/service.js';
import { selfSignedCertificate } from './support/tls.js';

const exec = promisify(execFile);
const EXIT = { notFound: 3, unauthenticated: 5, integrity: 6, forbidden: 8 };
const tokens: Record<string, string> = {};
const secrets: string[] = [];
const failures: CliResult[] = [];
const vmUser = randomUUID();
const vmDeployment = randomUUID();
let passphraseFile = '';

const context = serviceForFile(
  'vtpm-security',
  async ({ service, workDir }) => {
    const users: Array<[string, string, string[]]> = [
      ['alice', 'p1', ['member']],
      ['bob', 'p2', ['member']],
      ['root', 'ops', ['admin']],
      ['oscar', 'ops', ['vtpm-operator']],
    ];
    for (const [name, project, roles] of users) {
      const created = await service.json<{ token: string }>(
        'user',
        'create',
        name,
        '--project',
        project,
        ...roles.flatMap((r) => ['--role', r]),
      );
      tokens[name] = created.token;
      secrets.push(created.token);
    }
    secrets.push('export-passphrase-not-for-logs');
    passphraseFile = join(workDir, 'passphrase');
    await writeFile(passphraseFile, 'export-passphrase-not-for-logs');
    await as('alice', 'create', '--vm', vmUser, '--version', '2.0');
    await as('alice', 'create', '--vm', vmDeployment, '--version', '2.0', '--secret-security', 'deployment');
  },
  // QEMU as root: nothing is shared with a QEMU group, whatever libvirt's qemu.conf on this machine says.
  ['--pool-size', '0', '--log-level', 'debug', '--qemu-group', 'root'],
);

/** Runs the CLI as a user; remembers failures, whose messages are scanned for secrets later. */
async function as(user: string, ...args: string[]): Promise<CliResult> {
  const result = await context.service.cliAs(tokens[user]!, ...args);
  if (result.code !== 0) failures.push(result);
  return result;
}

async function jsonAs<T>(user: string, ...args: string[]): Promise<T> {
  const result = await as(user, '--json', ...args);
  assert.equal(result.code, 0, `${user}: vtpm ${args.join(' ')}: ${result.stderr}`);
  return JSON.parse(result.stdout) as T;
}

const listedBy = async (user: string) => (await jsonAs<VtpmJson[]>(user, 'list')).map((v) => v.vm);

describe('projects and roles', () => {
  it("a member reaches its own project's vTPMs; another project's answers exactly like a missing one", async () => {
    assert.deepEqual((await listedBy('alice')).sort(), [vmUser, vmDeployment].sort());
    assert.deepEqual(await listedBy('bob'), []);
    const missing = randomUUID();
    for (const args of [
      ['show'],
      ['start'],
      ['stop'],
      ['ek'],
      ['history'],
      ['delete', '--force'],
      ['export', '--out', '/dev/null', '--passphrase-file', passphraseFile],
    ]) {
      const [command, ...rest] = args;
      const theirs = await as('bob', command!, vmUser, ...rest);
      const nothing = await as('bob', command!, missing, ...rest);
      assert.equal(theirs.code, EXIT.notFound, `bob ${command}: ${theirs.stderr}`);
      assert.equal(
        theirs.stderr.replace(vmUser, 'VM'),
        nothing.stderr.replace(missing, 'VM'),
        `bob ${command} learns nothing more than for a missing VM`,
      );
    }
    assert.equal((await jsonAs<VtpmJson>('alice', 'show', vmUser)).status, 'stopped', 'bob changed nothing');
  });

  it("an admin sees every project's vTPMs but cannot use a secret bound to its owner", async () => {
    const listed = await listedBy('root');
    assert.ok(listed.includes(vmUser) && listed.includes(vmDeployment));
    const table = (await as('root', 'list')).stdout.split('\n');
    assert.match(table[0] ?? '', /^VM +PROJECT +VERSION/, "the admin's list has a project column");
    assert.match(table.find((line) => line.startsWith(vmUser)) ?? '', new RegExp(`^${vmUser} +p1 `));
    const start = await as('root', 'start', vmUser);
    assert.equal(start.code, EXIT.forbidden, start.stderr);
    assert.match(start.stderr, /secret is bound to project p1/);
    assert.equal(
      (await as('root', 'start', vmDeployment)).code,
      EXIT.forbidden,
      'operating needs the vtpm-operator role',
    );
    assert.equal(
      (await as('root', 'export', vmDeployment, '--out', '/dev/null', '--passphrase-file', passphraseFile)).code,
      EXIT.forbidden,
    );
    // Nor destroy it: seeing every vTPM is not owning them (one rule for use and crypto-erase).
    for (const vm of [vmUser, vmDeployment]) {
      const erase = await as('root', 'delete', '--force', vm);
      assert.equal(erase.code, EXIT.forbidden, erase.stderr);
      assert.match(erase.stderr, /root may not delete the vTPM/);
    }
    assert.ok((await listedBy('root')).includes(vmUser));
  });

  it('a vtpm-operator starts and stops a vTPM whose owner allowed it (deployment mode), and nothing else', async () => {
    assert.deepEqual(await listedBy('oscar'), [vmDeployment]);
    assert.equal((await jsonAs<VtpmJson>('oscar', 'start', vmDeployment)).status, 'running');
    assert.equal((await jsonAs<VtpmJson>('oscar', 'stop', vmDeployment)).status, 'stopped');
    assert.equal((await as('oscar', 'start', vmUser)).code, EXIT.notFound);
    assert.equal(
      (await as('oscar', 'export', vmDeployment, '--out', '/dev/null', '--passphrase-file', passphraseFile)).code,
      EXIT.forbidden,
    );
    // Destroying it is using it: the same delegation allows it, on a vTPM of its own for this test.
    const disposable = randomUUID();
    await as('alice', 'create', '--vm', disposable, '--version', '2.0', '--secret-security', 'deployment');
    assert.equal((await as('oscar', 'delete', '--yes', disposable)).code, 0);
    assert.equal((await as('alice', 'show', disposable)).code, EXIT.notFound);
  });

  it('managing users needs admin; hosts and the pool need admin or vtpm-operator', async () => {
    assert.equal((await as('alice', 'user', 'list')).code, EXIT.forbidden);
    assert.equal(
      (await as('oscar', 'user', 'create', 'mallory', '--project', 'p1', '--role', 'admin')).code,
      EXIT.forbidden,
    );
    assert.equal((await as('alice', 'hosts')).code, EXIT.forbidden);
    assert.equal((await as('alice', 'pool')).code, EXIT.forbidden);
    assert.equal((await as('oscar', 'hosts')).code, 0);
    const unknownRole = await as('root', 'user', 'create', 'eve', '--project', 'p1', '--role', 'superuser');
    assert.equal(unknownRole.code, 2);
    assert.match(unknownRole.stderr, /roles.*member, admin, vtpm-operator/);
  });
});

describe('tokens', () => {
  it('an expired token is refused', async () => {
    const issued = await jsonAs<{ token: string; expires_at: string }>(
      'root',
      'token',
      'create',
      'alice',
      '--expires-in',
      '5s',
    );
    secrets.push(issued.token);
    tokens.shortLived = issued.token;
    assert.equal((await as('shortLived', 'list')).code, 0);
    await delay(Math.max(0, Date.parse(issued.expires_at) - Date.now()) + 500);
    const refused = await as('shortLived', 'list');
    assert.equal(refused.code, EXIT.unauthenticated);
    assert.match(refused.stderr, /expired or revoked/);
  });

  it('a revoked token, and the tokens of a deleted user, are refused at once', async () => {
    const issued = await jsonAs<{ token: string; token_id: number }>('root', 'token', 'create', 'alice');
    secrets.push(issued.token);
    tokens.revoked = issued.token;
    assert.equal((await as('revoked', 'list')).code, 0);
    await jsonAs('root', 'token', 'revoke', String(issued.token_id));
    assert.equal((await as('revoked', 'list')).code, EXIT.unauthenticated);
    await jsonAs('root', 'user', 'delete', 'bob');
    assert.equal((await as('bob', 'list')).code, EXIT.unauthenticated);
  });
});

describe('the audit log', () => {
  it('records who did what to which VM, with the result, and every secret read', async () => {
    const events = await jsonAs<
      Array<{ actor: string; operation: string; vm: string | null; result: string; project: string | null }>
    >('root', 'events', '--vm', vmUser, '--limit', '1000');
    const has = (actor: string, operation: string, result: string) =>
      events.some((e) => e.actor === actor && e.operation === operation && e.result === result);
    assert.ok(has('alice', 'vtpm.create', 'ok'), 'the create');
    assert.ok(has('bob', 'vtpm.start', 'not_found'), "bob's refused start");
    assert.ok(has('root', 'vtpm.start', 'forbidden'), "the admin's refused start");
    assert.ok(has('alice', 'secret.read', 'ok'), 'the secret read at creation');
    assert.ok(events.every((e) => e.vm === vmUser && e.project === 'p1'));
    const operatorEvents = await jsonAs<Array<{ actor: string; operation: string }>>(
      'root',
      'events',
      '--vm',
      vmDeployment,
      '--limit',
      '1000',
    );
    assert.ok(
      operatorEvents.some((e) => e.actor === 'oscar' && e.operation === 'secret.read'),
      "the operator's start read the secret, as oscar",
    );

    // The owner sees what others tried on its vTPMs; nobody else sees its project's events.
    const aliceSees = await jsonAs<Array<{ actor: string }>>('alice', 'events', '--limit', '1000');
    assert.ok(aliceSees.some((e) => e.actor === 'bob'));
    const oscarSees = await jsonAs<Array<{ actor: string }>>('oscar', 'events', '--limit', '1000');
    assert.ok(oscarSees.some((e) => e.actor === 'oscar'));
    assert.ok(
      !oscarSees.some((e) => e.actor === 'alice' || e.actor === 'bob'),
      "projects p1 and p2's events stay hidden from project ops's operator",
    );
  });

  it('is append-only, and verify finds an entry changed behind its back', async () => {
    assert.match((await as('root', 'audit', 'verify')).stdout, /audit log intact: \d+ entries/);
    assert.equal((await as('alice', 'audit', 'verify')).code, EXIT.forbidden);
    const database = new Sqlite(join(context.service.dataDir, 'vtpm.sqlite'));
    try {
      assert.throws(
        () => database.prepare("UPDATE audit_events SET result = 'ok' WHERE result = 'forbidden'").run(),
        /append-only/,
      );
      assert.throws(() => database.prepare('DELETE FROM audit_events').run(), /append-only/);
      // Someone with the database in hand can drop the guard; the chain still tells.
      database.exec('DROP TRIGGER audit_events_no_update');
      const forged = database
        .prepare(
          "UPDATE audit_events SET result = 'ok' " +
            "WHERE seq = (SELECT MIN(seq) FROM audit_events WHERE result = 'forbidden')",
        )
        .run();
      assert.equal(forged.changes, 1);
    } finally {
      database.close();
    }
    const verify = await as('root', 'audit', 'verify');
    assert.equal(verify.code, EXIT.integrity, verify.stdout);
    assert.match(verify.stderr, /audit log is broken at entry \d+: its content does not match its hash/);
  });
});

describe('secrets stay out of sight', () => {
  it('no token or passphrase appears in the service log, error messages, audit entries or the database', async () => {
    const events = (await as('root', '--json', 'events', '--limit', '10000')).stdout;
    const database = await readFile(join(context.service.dataDir, 'vtpm.sqlite'));
    const places: Array<[string, string | Buffer]> = [
      ['service log', context.service.log],
      ['error messages', failures.map((f) => f.stderr + f.stdout).join('\n')],
      ['audit entries', events],
      ['database', database],
    ];
    // The scan reads real material: each place holds what the tests did.
    assert.ok(context.service.log.includes(vmUser) && events.includes(vmUser) && failures.length > 10);
    for (const secret of secrets) {
      for (const [name, text] of places)
        assert.equal(text.includes(secret), false, `a secret (${secret.slice(0, 8)}...) is in the ${name}`);
    }
  });
});

describe('hardening', () => {
  it(
    'swtpm runs as an unprivileged user under its seccomp filter; ' + 'state directories are 0700 and files 0600',
    async () => {
      const vm = randomUUID();
      await jsonAs('alice', 'create', '--vm', vm, '--version', '2.0');
      await jsonAs('alice', 'start', vm);
      try {
        const pid = Number(await readFile(join(context.service.dataDir, 'run', `${vm}.pid`), 'utf8'));
        const status = await readFile(`/proc/${pid}/status`, 'utf8');
        const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
        assert.notEqual(uid, 0, 'swtpm does not run as root');
        assert.equal(
          uid,
          Number((await exec('id', ['-u', 'tss'])).stdout.trim()),
          'it runs as tss, as libvirt runs it',
        );
        assert.equal(/^Seccomp:\s+(\d)/m.exec(status)?.[1], '2', 'a seccomp filter is on');

        const modeOf = async (path: string) => ((await stat(path)).mode & 0o777).toString(8);
        const stateDir = join(context.service.dataDir, 'tpm', vm);
        assert.equal(await modeOf(stateDir), '700');
        for (const file of (await readdir(stateDir)).filter((f) => f.endsWith('.permall')))
          assert.equal(await modeOf(join(stateDir, file)), '600', file);
        for (const dir of ['keys', 'ca', 'log', 'nvram', 'run'])
          assert.equal(await modeOf(join(context.service.dataDir, dir)), '700', dir);
        for (const file of ['admin.token', 'vtpm.sqlite'])
          assert.equal(await modeOf(join(context.service.dataDir, file)), '600', file);
      } finally {
        await jsonAs('alice', 'stop', vm);
      }
    },
  );
});

describe('TLS', () => {
  it('serves the API over HTTPS; the CLI verifies the certificate; a key others can read is refused', async () => {
    const dir = await temporaryDir('vtpm-tls');
    try {
      const { cert, key } = await selfSignedCertificate(dir);

      await chmod(key, 0o644);
      const refused = await exec(process.execPath, [
        CLI,
        'serve',
        '--data-dir',
        join(dir, 'refused'),
        '--listen',
        '127.0.0.1:0',
        '--tls-cert',
        cert,
        '--tls-key',
        key,
      ]).then(
        () => undefined,
        (error: { code: number; stderr: string }) => error,
      );
      assert.equal(refused?.code, 2);
      assert.match(refused?.stderr ?? '', /--tls-key.*only its owner can read \(chmod 600/);
      await chmod(key, 0o600);

      const service = await ServiceUnderTest.start(join(dir, 'data'), [
        '--pool-size',
        '0',
        '--tls-cert',
        cert,
        '--tls-key',
        key,
      ]);
      try {
        assert.match(service.url, /^https:\/\/127\.0\.0\.1:\d+$/);
        const untrusted = await service.cli('list');
        assert.equal(untrusted.code, 7, untrusted.stderr);
        assert.match(untrusted.stderr, /TLS certificate is not one this client trusts: pass --ca-file/);
        assert.equal((await service.cli('--ca-file', cert, 'list')).code, 0);
        const plain = await service.cli('--url', service.url.replace('https:', 'http:'), '--ca-file', cert, 'list');
        assert.notEqual(plain.code, 0, 'plain HTTP gets no answer');
      } finally {
        await service.stop();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
