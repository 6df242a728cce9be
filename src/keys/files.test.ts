/**
 * Key material and credentials reach the disk durably: the product's own write
 * paths (the helper, the local key manager's first key, a secret, a rotation,
 * a deletion, the admin token) run in a child process under strace, and the
 * system calls it made are checked. A rename or a removal is durable only once
 * its directory is synced; a file written in place can be lost half written.
 */
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { removeLeftoverTemporaries } from './files.js';
import { readOwnerOnlyFile } from './owner-only-file.js';

const run = promisify(execFile);
const TRACED = 'openat,close,fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat';

interface Call {
  name: string;
  args: string;
  result: number;
}

/** `strace -f -o` output as calls in the order they returned; a call another thread interrupted is joined again. */
function parseTrace(text: string): Call[] {
  const pending = new Map<string, string>();
  const calls: Call[] = [];
  for (const line of text.split('\n')) {
    const traced = /^(\d+)\s+(.*)$/.exec(line);
    if (!traced) continue;
    const [, pid, rest] = traced as unknown as [string, string, string];
    if (rest.endsWith('<unfinished ...>')) {
      pending.set(pid, rest.slice(0, -'<unfinished ...>'.length));
      continue;
    }
    const resumed = /^<\.\.\. \w+ resumed>(.*)$/.exec(rest);
    const whole = resumed ? `${pending.get(pid) ?? ''}${resumed[1]}` : rest;
    if (resumed) pending.delete(pid);
    const call = /^(\w+)\((.*)\)\s+=\s+(-?\d+)/.exec(whole);
    if (call) calls.push({ name: call[1]!, args: call[2]!, result: Number(call[3]) });
  }
  return calls;
}

const quoted = (args: string) => [...args.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]!);

/** Every path the child named, with what happened to it, in order, fds resolved to the paths they were opened on. */
interface Event {
  index: number;
  kind: 'open' | 'sync' | 'rename' | 'unlink';
  path: string;
  /** rename: the new name. */
  to?: string;
  flags?: string;
}

function events(calls: Call[]): Event[] {
  const fds = new Map<number, string>();
  const out: Event[] = [];
  for (const [index, { name, args, result }] of calls.entries()) {
    if (result < 0) continue;
    const paths = quoted(args);
    if (name === 'openat') {
      fds.set(result, paths[0]!);
      out.push({ index, kind: 'open', path: paths[0]!, flags: args });
    } else if (name === 'close') {
      fds.delete(Number(args));
    } else if (name === 'fsync' || name === 'fdatasync') {
      const path = fds.get(Number(args));
      if (path) out.push({ index, kind: 'sync', path });
    } else if (name.startsWith('rename')) {
      out.push({ index, kind: 'rename', path: paths[0]!, to: paths[1]! });
    } else if (name === 'unlink' || name === 'unlinkat') {
      out.push({ index, kind: 'unlink', path: paths[0]! });
    }
  }
  return out;
}

/** What the traced child does: the write paths of key material and credentials, one after another. */
const CHILD = `
const [root, files, local, tokens, store] = process.argv.slice(1);
const { writeFileAtomically } = await import(files);
const { LocalKeyManager } = await import(local);
const { ensureAdminToken } = await import(tokens);
const { openEmbeddedStore } = await import(store);
await writeFileAtomically(root + '/plain.bin', Buffer.from('key material'));
await writeFileAtomically(root + '/plain.bin', Buffer.from('other key material'));
const keys = await LocalKeyManager.open(root);
const kept = await keys.createSecret();
const gone = await keys.createSecret();
await keys.rotate();
await keys.deleteSecret(gone);
console.log(JSON.stringify({ kept, gone }));
await keys.close();
const db = await openEmbeddedStore(root);
await ensureAdminToken(db, root);
await db.close();
`;

describe('durable writes of key material, traced', () => {
  let root = '';
  let trace: Event[] = [];
  let refs: { kept: string; gone: string };

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'vtpm-durable-test-'));
    const modules = ['./files.js', './local/local-key-manager.js', '../auth/tokens.js', '../store/index.js'];
    const output = join(root, 'strace.out');
    const child = await run(
      'strace',
      ['-f', '-qq', '-o', output, '-e', `trace=${TRACED}`, process.execPath, '--input-type=module', '-e', CHILD].concat(
        root,
        ...modules.map((m) => new URL(m, import.meta.url).href),
      ),
      { maxBuffer: 1 << 24 },
    ).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') throw new Error('these tests need strace (the Debian package strace)');
      throw error;
    });
    refs = JSON.parse(child.stdout.trim().split('\n').pop()!) as typeof refs;
    trace = events(parseTrace(await readFile(output, 'utf8'))).filter((e) => e.path.startsWith(root));
  });
  after(() => rm(root, { recursive: true, force: true }));

  /** Synced after `event` and before the next rename or removal: the child does one write at a time. */
  const syncedAfter = (event: Event, path: string) => {
    const next = trace.find((e) => (e.kind === 'rename' || e.kind === 'unlink') && e.index > event.index);
    const until = next?.index ?? Number.POSITIVE_INFINITY;
    return trace.some((e) => e.kind === 'sync' && e.path === path && e.index > event.index && e.index < until);
  };
  const renamesTo = (suffix: string) => trace.filter((e) => e.kind === 'rename' && e.to!.endsWith(suffix));

  it('syncs the directory after every rename into it', () => {
    const renames = trace.filter((e) => e.kind === 'rename');
    assert.ok(renames.length >= 8, `the child renamed files into place (${renames.length} renames traced)`);
    for (const rename of renames)
      assert.ok(
        syncedAfter(rename, dirname(rename.to!)),
        `${dirname(rename.to!)} synced after the rename to ${rename.to}`,
      );
  });

  it('writes each file to a new 0600 temporary one and syncs it before renaming it over', () => {
    for (const rename of trace.filter((e) => e.kind === 'rename' && e.path.includes('.tmp-'))) {
      const opened = trace.find((e) => e.kind === 'open' && e.path === rename.path);
      assert.ok(opened, `${rename.path} was opened`);
      assert.match(opened.flags!, /O_CREAT\|O_EXCL.*, 0600$/, `${rename.path} is created afresh, 0600`);
      assert.ok(
        trace.some((e) => e.kind === 'sync' && e.path === rename.path && e.index < rename.index),
        `${rename.path} synced before its rename`,
      );
    }
  });

  it('covers the master key, the next one, its promotion, the secrets and the admin token', () => {
    const secret = (ref: string) => `/keys/secrets/${ref.slice('local:'.length)}`;
    for (const suffix of ['/plain.bin', '/keys/master.key', '/keys/master.next.key', secret(refs.kept), '/admin.token'])
      assert.ok(renamesTo(suffix).length > 0, `a rename to ${suffix}`);
    assert.ok(
      renamesTo('/keys/master.key').some((e) => e.path.endsWith('/keys/master.next.key')),
      'the next master key is renamed over the old one',
    );
    assert.equal(renamesTo(secret(refs.kept)).length, 2, 'the secret was stored, then re-sealed by the rotation');
  });

  it('never opens a live key or credential file for writing in place', () => {
    const live = /\/(plain\.bin|master(\.next)?\.key|[0-9a-f-]{36}|admin\.token)$/;
    for (const open of trace.filter((e) => e.kind === 'open' && live.test(e.path)))
      assert.doesNotMatch(open.flags!, /O_WRONLY|O_RDWR|O_TRUNC/, `${open.path} is not written in place`);
  });

  it('destroys the old master key only after the new one is durably in its place', () => {
    const promotion = renamesTo('/keys/master.key').find((e) => e.path.endsWith('/keys/master.next.key'))!;
    const retiredWrite = trace.find((e) => e.kind === 'open' && e.path.endsWith('/keys/master.retired.key'));
    assert.ok(retiredWrite, 'the old key was opened to be overwritten');
    assert.ok(retiredWrite.index > promotion.index, 'after the promotion');
    assert.ok(
      trace.some(
        (e) =>
          e.kind === 'sync' && e.path.endsWith('/keys') && e.index > promotion.index && e.index < retiredWrite.index,
      ),
      'the promotion was synced before the old key was touched',
    );
    const removal = trace.find((e) => e.kind === 'unlink' && e.path.endsWith('/keys/master.retired.key'));
    assert.ok(removal && syncedAfter(removal, join(root, 'keys')), 'its removal is synced');
  });

  it('syncs the directory after a deleted secret is removed', () => {
    const removal = trace.find((e) => e.kind === 'unlink' && e.path.endsWith(refs.gone.slice('local:'.length)));
    assert.ok(removal, 'the deleted secret was unlinked');
    assert.ok(syncedAfter(removal, join(root, 'keys', 'secrets')), 'the secrets directory synced after the removal');
  });
});

describe('leftovers of writes a crash interrupted', () => {
  it("are removed, while a live process's write under way and other files stay", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vtpm-leftovers-'));
    try {
      const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString();
      const names = {
        left: `secret-a.tmp-${dead}-0a1b2c3d4e5f`,
        underWay: `secret-b.tmp-${process.pid}-0a1b2c3d4e5f`,
        kept: 'secret-c',
      };
      for (const name of Object.values(names)) await writeFile(join(dir, name), 'sealed');
      await removeLeftoverTemporaries(dir);
      assert.deepEqual((await readdir(dir)).sort(), [names.kept, names.underWay].sort());
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('readOwnerOnlyFile', () => {
  it('refuses what is not a regular file (a FIFO would be read forever), naming the option', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vtpm-owner-only-'));
    try {
      const fifo = join(dir, 'token');
      spawnSync('mkfifo', ['-m', '600', fifo]);
      await assert.rejects(readOwnerOnlyFile(fifo, '--token-file', 'the API token'), {
        code: 'invalid_argument',
        message: /^--token-file: expected a regular file holding the API token/,
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
