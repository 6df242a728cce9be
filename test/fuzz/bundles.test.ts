/**
 * Import bundles fuzzed byte by byte: a real export of a real vTPM, then
 * bits flipped, bytes set, inserted and removed, the end cut or extended,
 * and imported through the API and `vtpm import`. A damaged bundle is the
 * caller's input: always a 4xx with the code `invalid_bundle`, never a 5xx,
 * and nothing imported. Bundles that authenticate (sealed with the right
 * passphrase) but whose content is anything at all must not be a 5xx either.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { VtpmJson } from '../e2e/support/service.js';
import { errorCodeOf, openBundle } from './support/bundle-file.js';
import { damaging } from './support/bytes.js';
import { startFuzzService } from './support/fuzz-service.js';
import { CANARY, mutatedJson } from './support/hostile.js';
import { Counts, fuzz, seededUuid } from './support/settings.js';

const PASSPHRASE = 'a long enough bundle passphrase';
const counts = new Counts();
const { workDir, service, identities } = await startFuzzService('bundles', counts);
const token = identities.admin.token;
const passphraseFile = join(workDir, 'passphrase');
await writeFile(passphraseFile, `${PASSPHRASE}\n`, { mode: 0o600 });

const source = identities.target;
const bundleFile = join(workDir, 'bundle');
await service.jsonAs(token, 'export', source, '--out', bundleFile, '--passphrase-file', passphraseFile);
const bundle = await readFile(bundleFile);

async function importing(body: unknown): Promise<{ status: number; text: string }> {
  const response = await fetch(`${service.url}/v1/vtpms/import`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  return { status: response.status, text: await response.text() };
}

const vtpmCount = async () =>
  (
    (await (await fetch(`${service.url}/v1/vtpms`, { headers: { authorization: `Bearer ${token}` } })).json()) as {
      vtpms: unknown[];
    }
  ).vtpms.length;

const { content, sealed } = openBundle(bundle, PASSPHRASE);

describe('import bundles fuzzed byte by byte', () => {
  it('refuses every damaged bundle through the API with a 4xx invalid_bundle, and imports nothing', async () => {
    const before = await vtpmCount();
    await fuzz(
      fc.asyncProperty(damaging(bundle), fc.boolean(), async ({ edits, damaged }, underAnotherVm) => {
        const body = {
          bundle: damaged.toString('base64'),
          passphrase: PASSPHRASE,
          ...(underAnotherVm && { vm: seededUuid('copy') }),
        };
        const answer = await importing(body);
        counts.add('bundles mutated');
        const at = `edits ${JSON.stringify(edits).slice(0, 300)}: ${answer.status} ${answer.text.slice(0, 300)}`;
        assert.equal(answer.status, 422, at);
        assert.equal(errorCodeOf(answer.text), 'invalid_bundle', at);
      }),
      { runs: 80 },
    );
    assert.equal(await vtpmCount(), before, 'a damaged bundle imported something');
  });

  it('refuses damaged bundles through `vtpm import` with exit code 6 and a message, no stack trace', async () => {
    let file = 0;
    await fuzz(
      fc.asyncProperty(damaging(bundle), async ({ edits, damaged }) => {
        file += 1;
        const path = join(workDir, `damaged-${file}`);
        await writeFile(path, damaged);
        const result = await service.cliAs(token, 'import', path, '--passphrase-file', passphraseFile);
        counts.add('bundles mutated');
        counts.add('CLI imports');
        const at = `edits ${JSON.stringify(edits).slice(0, 300)}: exit ${result.code}, stderr ${result.stderr}`;
        assert.equal(result.code, 6, at);
        assert.match(result.stderr, /^vtpm: the bundle .*\[invalid_bundle\]\n$/, at);
      }),
      { runs: 4, shrink: false },
    );
  });

  it('answers a bundle that authenticates but holds anything at all with no 5xx', async () => {
    await fuzz(
      fc.asyncProperty(mutatedJson(content, [CANARY, source]), fc.boolean(), async (value, underAnotherVm) => {
        const vm = seededUuid(`crafted-${counts.get('crafted bundles')}`);
        const answer = await importing({
          bundle: sealed(value).toString('base64'),
          passphrase: PASSPHRASE,
          ...(underAnotherVm && { vm }),
        });
        counts.add('crafted bundles');
        const at = `content ${JSON.stringify(value).slice(0, 400)}: ${answer.status} ${answer.text.slice(0, 300)}`;
        assert.ok(answer.status < 500, at);
        if (answer.status >= 400) assert.ok(errorCodeOf(answer.text), at);
        else {
          // Harmless changes (a reason, a date) import; the copy goes, so that the next run finds the UUID free.
          const imported = JSON.parse(answer.text) as VtpmJson;
          const deleted = await fetch(`${service.url}/v1/vtpms/${imported.vm}?force=true`, {
            method: 'DELETE',
            headers: { authorization: `Bearer ${token}` },
          });
          assert.equal(deleted.status, 204);
        }
      }),
      { runs: 40 },
    );
  });
});
