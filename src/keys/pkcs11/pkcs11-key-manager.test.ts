/**
 * The PKCS#11 key manager against a real SoftHSM2 token: secrets round-trip
 * and never appear in the data directory, rotation replaces the key inside
 * the token, an interrupted rotation finishes at the next open, and a copy of
 * the data directory opens nothing with another token or a wrong PIN.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cp, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { softHsm, type SoftHsm } from '../../../test/e2e/support/softhsm.js';
import { IntegrityError, KeyManagerError } from '../../errors.js';
import { Pkcs11KeyManager, type Pkcs11Options } from './pkcs11-key-manager.js';
import { Pkcs11Token } from './token.js';
import { rotateAmidOperations } from '../testing/rotation-amid-operations.js';

let root = '';
let hsm: SoftHsm;
let options: Pkcs11Options;
let directories = 0;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vtpm-pkcs11-test-'));
  hsm = await softHsm(root, 'unit');
  process.env.SOFTHSM2_CONF = hsm.conf;
  options = { module: hsm.module, tokenLabel: 'unit', pin: hsm.pin, keyLabel: 'unit-kek' };
});
after(() => rm(root, { recursive: true, force: true }));

/** Each test its own data directory and its own key label, so that their keys in the one token do not meet. */
function freshOptions(): { dataDir: string; options: Pkcs11Options } {
  directories += 1;
  return { dataDir: join(root, `data-${directories}`), options: { ...options, keyLabel: `kek-${directories}` } };
}

function keysInToken(label: string): string[] {
  const token = Pkcs11Token.open(options);
  try {
    return token.findKeys(label).map((key) => key.id.toString('hex'));
  } finally {
    token.close();
  }
}

async function withSecrets(count: number) {
  const { dataDir, options } = freshOptions();
  const keys = await Pkcs11KeyManager.open(dataDir, options);
  const refs: string[] = [];
  for (let i = 0; i < count; i += 1) refs.push(await keys.createSecret());
  const values = await Promise.all(refs.map((ref) => keys.readSecret(ref)));
  await keys.close();
  return { dataDir, options, refs, values };
}

const secretFile = (dataDir: string, ref: string) =>
  join(dataDir, 'keys', 'pkcs11', 'secrets', ref.slice('pkcs11:'.length));
const kekState = async (dataDir: string) =>
  JSON.parse(await readFile(join(dataDir, 'keys', 'pkcs11', 'kek.json'), 'utf8')) as { current: string; next?: string };

describe('PKCS#11 key manager (SoftHSM2)', () => {
  it('keeps secrets wrapped by a key that lives in the token, and deletes them', async () => {
    const { dataDir, options, refs, values } = await withSecrets(2);
    assert.notDeepEqual(values[0], values[1]);
    for (const [i, ref] of refs.entries()) {
      assert.match(ref, /^pkcs11:[0-9a-f-]{36}$/);
      const wrapped = await readFile(secretFile(dataDir, ref));
      assert.equal(wrapped.indexOf(values[i]!), -1, 'the secret is not in its file in the clear');
    }
    assert.deepEqual(
      keysInToken(options.keyLabel),
      [(await kekState(dataDir)).current],
      'one key-encryption key, the one kek.json names',
    );

    const keys = await Pkcs11KeyManager.open(dataDir, options);
    try {
      assert.deepEqual(await keys.readSecret(refs[0]!), values[0], 'a reopened key manager reads what it stored');
      await keys.deleteSecret(refs[0]!);
      await keys.deleteSecret(refs[0]!);
      await assert.rejects(keys.readSecret(refs[0]!), KeyManagerError);
      // A wrapped secret moved to another reference does not open: the reference is authenticated.
      await cp(secretFile(dataDir, refs[1]!), secretFile(dataDir, refs[0]!));
      await assert.rejects(keys.readSecret(refs[0]!), IntegrityError);
    } finally {
      await keys.close();
    }
  });

  it(
    'rotates: a new key in the token, every secret re-wrapped with its value unchanged, ' + 'the old key destroyed',
    async () => {
      const { dataDir, options, refs, values } = await withSecrets(3);
      const before = (await kekState(dataDir)).current;
      const keys = await Pkcs11KeyManager.open(dataDir, options);
      try {
        assert.deepEqual(await keys.rotate(), { kind: 'pkcs11', rewrapped: 3, already_rewrapped: 0 });
        for (const [i, ref] of refs.entries()) assert.deepEqual(await keys.readSecret(ref), values[i]);
      } finally {
        await keys.close();
      }
      const after = await kekState(dataDir);
      assert.notEqual(after.current, before);
      assert.equal(after.next, undefined);
      assert.deepEqual(keysInToken(options.keyLabel), [after.current], 'the old key is gone from the token');
      const reopened = await Pkcs11KeyManager.open(dataDir, options);
      try {
        assert.deepEqual(await reopened.readSecret(refs[2]!), values[2]);
      } finally {
        await reopened.close();
      }
    },
  );

  it('finishes an interrupted rotation when it opens again', async () => {
    const { dataDir, options, refs, values } = await withSecrets(3);
    // A secret that cannot be opened stops the rotation part-way, as a crash would.
    const order = (await readdir(join(dataDir, 'keys', 'pkcs11', 'secrets'))).map((file) => `pkcs11:${file}`);
    const stopper = order[1]!;
    const original = await readFile(secretFile(dataDir, stopper));
    const damaged = Buffer.from(original);
    damaged[damaged.length - 1]! ^= 0xff;
    await writeFile(secretFile(dataDir, stopper), damaged);
    const keys = await Pkcs11KeyManager.open(dataDir, options);
    await assert.rejects(keys.rotate(), IntegrityError);
    await keys.close();
    const interrupted = await kekState(dataDir);
    assert.ok(interrupted.next, 'kek.json names the next key while the rotation is unfinished');
    assert.equal(keysInToken(options.keyLabel).length, 2, 'both keys are in the token until it finishes');

    await writeFile(secretFile(dataDir, stopper), original);
    const resumed = await Pkcs11KeyManager.open(dataDir, options);
    try {
      for (const [i, ref] of refs.entries()) assert.deepEqual(await resumed.readSecret(ref), values[i]);
    } finally {
      await resumed.close();
    }
    assert.deepEqual(await kekState(dataDir), { current: interrupted.next });
    assert.deepEqual(keysInToken(options.keyLabel), [interrupted.next]);
  });

  it('opens nothing with another token, a wrong PIN or a missing token, and says which', async () => {
    const { dataDir, options } = await withSecrets(1);
    await hsm.addToken('other');
    await assert.rejects(
      Pkcs11KeyManager.open(dataDir, { ...options, tokenLabel: 'other' }),
      /current key-encryption key .* is not in the token/,
    );
    await assert.rejects(
      Pkcs11KeyManager.open(dataDir, { ...options, pin: 'wrong-pin' }),
      /refused the PIN \(CKR_PIN_INCORRECT\)/,
    );
    await assert.rejects(
      Pkcs11KeyManager.open(dataDir, { ...options, tokenLabel: 'absent' }),
      new RegExp(
        'key manager unavailable: no PKCS#11 token "absent" .*; tokens present: "unit", "other"' +
          '|tokens present: "other", "unit"',
      ),
    );
    await assert.rejects(
      Pkcs11KeyManager.open(join(root, 'fresh'), options),
      /already holds 1 key\(s\) labelled .* this data directory does not know/,
    );
  });

  it(
    'while the token is away: "key manager unavailable"; ' + 'once it is back, the same key manager works again',
    async () => {
      const { dataDir, options, refs, values } = await withSecrets(1);
      const keys = await Pkcs11KeyManager.open(dataDir, options);
      try {
        await rename(hsm.tokens, `${hsm.tokens}.away`);
        try {
          await assert.rejects(
            keys.readSecret(refs[0]!),
            /^KeyManagerError: key manager unavailable: .*PKCS#11 token "unit"/,
          );
          await assert.rejects(keys.createSecret(), /key manager unavailable/);
        } finally {
          await rename(`${hsm.tokens}.away`, hsm.tokens);
        }
        assert.deepEqual(await keys.readSecret(refs[0]!), values[0]);
        assert.match(await keys.createSecret(), /^pkcs11:/);
      } finally {
        await keys.close();
      }
    },
  );

  it('a token that stops answering fails calls by the deadline, never stalls the event loop, comes back', async () => {
    const { dataDir, options, refs, values } = await withSecrets(1);
    const keys = await Pkcs11KeyManager.open(dataDir, { ...options, callDeadlineMs: 500 });
    try {
      // SoftHSM2 takes a POSIX lock on the token's files for each operation and waits for it: held by another
      // process, the module's call blocks as a network HSM that stopped answering does.
      const holder = await holdTokenFiles(hsm.tokens);
      let ticks = 0;
      const ticker = setInterval(() => (ticks += 1), 10);
      try {
        await assert.rejects(keys.readSecret(refs[0]!), /key manager unavailable: .* did not answer within 500 ms/);
        await assert.rejects(keys.createSecret(), /key manager unavailable/);
      } finally {
        clearInterval(ticker);
        await holder.release();
      }
      assert.ok(ticks >= 20, `the event loop ran while the token hung (${ticks} ticks of 10 ms in about 1 s)`);
      assert.deepEqual(await keys.readSecret(refs[0]!), values[0]);
    } finally {
      await keys.close();
    }
  });
});

/** Another process holding every file of every token under `tokens` locked (fcntl, as SoftHSM2 locks them). */
async function holdTokenFiles(tokens: string): Promise<{ release(): Promise<void> }> {
  const script = [
    'import fcntl, glob, select, sys',
    `files = [open(p, 'r+') for p in glob.glob(${JSON.stringify(`${tokens}/*/*`)})]`,
    'for f in files: fcntl.lockf(f, fcntl.LOCK_EX)',
    "print('held', flush=True)",
    // Let go after 5 s at most: a blocked event loop cannot tell it to, and the test then fails rather than hangs.
    'select.select([sys.stdin], [], [], 5)',
  ].join('\n');
  const holder = spawn('python3', ['-c', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise((resolve) => holder.stdout.once('data', resolve));
  return {
    async release() {
      const exited = new Promise((resolve) => holder.once('exit', resolve));
      holder.stdin.end();
      await exited;
    },
  };
}

describe('PKCS#11 key manager: a rotation among other operations', () => {
  // Three rounds, the rotation starting after a different number of stores each time.
  for (const at of [5, 15, 30])
    it(`waits for stores, reads and deletes under way, and what starts after it waits for it (at ${at})`, async () => {
      const { dataDir, options, refs: existing, values: existingValues } = await withSecrets(6);
      await rotateAmidOperations(() => Pkcs11KeyManager.open(dataDir, options), existing, existingValues, at);
    });
});
