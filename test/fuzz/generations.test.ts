/**
 * Stored generations damaged byte by byte: a generation's encrypted data,
 * its wrapped data key, its digest or its predecessor's digest is changed
 * in the database of a running `vtpm serve` (as a disk, a backup or someone
 * with the file would change it), then read through export, restore and
 * start. Reading it must fail with a typed error (integrity_failed or
 * rollback_detected: a 5xx is right, the data is the service's), never hang,
 * never crash, never hand out other bytes than were stored; the vault's
 * other generations stay readable, and once the bytes are put back
 * everything reads again.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { digestOf } from '../../src/vault/state-vault.js';
import { errorCodeOf, openBundle } from './support/bundle-file.js';
import { damaging } from './support/bytes.js';
import { startFuzzService } from './support/fuzz-service.js';
import { apiCall } from './support/identities.js';
import { Counts, fuzz } from './support/settings.js';

const PASSPHRASE = 'a long enough bundle passphrase';
const INTEGRITY = new Set(['integrity_failed', 'rollback_detected']);
const COLUMNS = ['ciphertext', 'wrapped_key', 'digest', 'previous_digest'] as const;
type Column = (typeof COLUMNS)[number];

const counts = new Counts();
// Restores add generations; none may be pruned while the fuzz aims at it.
const { workDir, dataDir, service, identities } = await startFuzzService('generations', counts, [
  '--pool-size',
  '0',
  '--retention',
  '1000',
]);
const vm = identities.target;
const token = identities.admin.token;
const call = (method: string, path: string, body?: unknown) => apiCall(service.url, token, method, path, body);
// Generations 2 and 3 are copies of 1 made by restore: three to damage, and others to read meanwhile.
for (let i = 0; i < 2; i += 1)
  assert.equal((await call('POST', `/v1/vtpms/${vm}/restore`, { generation: 1 })).status, 200);

const passphraseFile = join(workDir, 'passphrase');
await writeFile(passphraseFile, PASSPHRASE, { mode: 0o600 });

const db = new Database(join(dataDir, 'vtpm.sqlite'));
db.pragma('busy_timeout = 10000');
after(() => db.close());

interface Stored {
  generation: number;
  digest: string;
}

const generations = (): Stored[] =>
  db
    .prepare("SELECT generation, digest FROM state_generations WHERE vm = ? AND kind = 'tpm' ORDER BY generation")
    .all(vm) as Stored[];

function column(generation: number, name: Column): Buffer {
  const row = db
    .prepare(`SELECT ${name} AS value FROM state_generations WHERE vm = ? AND kind = 'tpm' AND generation = ?`)
    .get(vm, generation) as { value: Buffer | string };
  return Buffer.isBuffer(row.value) ? row.value : Buffer.from(row.value);
}

function write(generation: number, name: Column, value: Buffer): void {
  const stored = name === 'ciphertext' || name === 'wrapped_key' ? value : value.toString('latin1');
  db.prepare(`UPDATE state_generations SET ${name} = ? WHERE vm = ? AND kind = 'tpm' AND generation = ?`).run(
    stored,
    vm,
    generation,
  );
}

async function exported(generations: number | 'all'): Promise<{ status: number; text: string }> {
  const response = await fetch(`${service.url}/v1/vtpms/${vm}/export`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ passphrase: PASSPHRASE, generations }),
    signal: AbortSignal.timeout(10_000),
  });
  return { status: response.status, text: await response.text() };
}

/** Every generation a successful export handed out holds the very bytes that were stored under its number. */
function assertTrueBytes(answer: { text: string }, stored: Stored[], at: string): void {
  const { bundle } = JSON.parse(answer.text) as { bundle: string };
  const { content } = openBundle(Buffer.from(bundle, 'base64'), PASSPHRASE);
  for (const g of (content as { generations: Array<{ kind: string; generation: number; data: string }> }).generations) {
    if (g.kind !== 'tpm') continue;
    const expected = stored.find((s) => s.generation === g.generation)?.digest;
    assert.equal(digestOf(Buffer.from(g.data, 'base64')), expected, `${at}: generation ${g.generation}'s bytes`);
  }
}

function assertRefusedAsDamaged(answer: { status: number; text: string }, at: string): void {
  assert.ok(answer.status >= 500 && answer.status < 600, `${at}: answered ${answer.status} ${answer.text}`);
  assert.ok(INTEGRITY.has(errorCodeOf(answer.text) ?? ''), `${at}: ${answer.text}`);
}

const intact = generations();
const damage = fc
  .record({
    generation: fc.constantFrom(...intact.map((g) => g.generation)),
    name: fc.constantFrom(...COLUMNS),
  })
  .chain(({ generation, name }) =>
    damaging(column(generation, name)).map((damaged) => ({ generation, name, ...damaged })),
  );

describe('stored generations fuzzed byte by byte', () => {
  it('a damaged generation is refused with a typed error wherever it is read; the others stay readable', async () => {
    const head = Math.max(...intact.map((g) => g.generation));
    const cliRuns = { left: 2 };
    await fuzz(
      fc.asyncProperty(damage, async ({ generation, name, edits, damaged }) => {
        const original = column(generation, name);
        const at = `generation ${generation} (head ${head}), ${name}, edits ${JSON.stringify(edits).slice(0, 200)}`;
        write(generation, name, damaged);
        counts.add('generations damaged');
        try {
          assertRefusedAsDamaged(await exported('all'), `export of all, ${at}`);
          const newest = await exported(1);
          if (generation === head) assertRefusedAsDamaged(newest, `export of the head, ${at}`);
          else {
            assert.equal(newest.status, 200, `the head must stay readable, ${at}: ${newest.text}`);
            assertTrueBytes(newest, intact, at);
          }
          const restored = await call('POST', `/v1/vtpms/${vm}/restore`, { generation });
          assertRefusedAsDamaged({ status: restored.status, text: JSON.stringify(restored.json) }, `restore, ${at}`);
          if (generation === head) {
            const started = await call('POST', `/v1/vtpms/${vm}/start`);
            assertRefusedAsDamaged({ status: started.status, text: JSON.stringify(started.json) }, `start, ${at}`);
            const shown = await call('GET', `/v1/vtpms/${vm}`);
            assert.equal(shown.json.status, 'stopped', `a start from a damaged head left it ${shown.json.status}`);
          }
          if (cliRuns.left > 0) {
            cliRuns.left -= 1;
            const out = ['--out', join(workDir, 'never-written'), '--passphrase-file', passphraseFile];
            const cli = await service.cliAs(token, 'export', vm, '--generations', 'all', ...out);
            counts.add('CLI reads');
            assert.equal(cli.code, 6, `vtpm export, ${at}: ${cli.stderr}`);
            assert.match(cli.stderr, /^vtpm: .*\[(integrity_failed|rollback_detected)\]\n$/);
            const restore = await service.cliAs(token, 'restore', vm, '--generation', String(generation));
            counts.add('CLI reads');
            assert.equal(restore.code, 6, `vtpm restore, ${at}: ${restore.stderr}`);
          }
        } finally {
          write(generation, name, original);
        }
        const repaired = await exported('all');
        assert.equal(repaired.status, 200, `with its bytes back, ${at}: ${repaired.text}`);
        assertTrueBytes(repaired, intact, `repaired, ${at}`);
      }),
      { runs: 30 },
    );
    assert.deepEqual(generations(), intact, 'the fuzz changed what the vault holds');
  });
});
