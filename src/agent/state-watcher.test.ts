/** The watcher over real files in a temporary directory: every change reaches the reporter, failures are retried. */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { StateConflictError, UnreachableError } from '../errors.js';
import { digestOf } from '../vault/state-vault.js';
import type { Lineage } from './lineage.js';
import { StateWatcher, type WatchedReport, type WatcherEvents } from './state-watcher.js';

let dir: string;
let watchers: StateWatcher[];
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vtpm-watcher-'));
  watchers = [];
});
afterEach(async () => {
  for (const watcher of watchers) watcher.abandonReports();
  await rm(dir, { recursive: true, force: true });
});

const events: WatcherEvents = {
  refused: () => undefined,
  failed: () => undefined,
  watchFailed: () => undefined,
  taken: () => undefined,
};

/** A state file written as swtpm writes it: a temporary file renamed over. */
async function swtpmWrites(content: string, into = dir): Promise<void> {
  await writeFile(join(into, 'tpm2-00.permall.tmp'), content);
  await rename(join(into, 'tpm2-00.permall.tmp'), join(into, 'tpm2-00.permall'));
}

function watcher(
  report: (r: WatchedReport) => Promise<void>,
  initial?: Buffer,
  watched = dir,
  lineage?: Lineage,
  heard = events,
): StateWatcher {
  const target = {
    dir: watched,
    file: 'tpm2-00.permall',
    matches: (n: string) => n.endsWith('.permall'),
    debounceMs: 5,
  };
  const created = new StateWatcher(target, report, heard, initial, lineage);
  watchers.push(created);
  return created;
}

async function until(condition: () => boolean, what: string): Promise<void> {
  for (let waited = 0; !condition(); waited += 20) {
    if (waited > 10_000) assert.fail(`timed out waiting for ${what}`);
    await delay(20);
  }
}

describe('StateWatcher', () => {
  it("tells each change's lag from when it was noticed to when it was taken, failed tries included", async () => {
    const lags: number[] = [];
    let failures = 1;
    let refuse = false;
    const w = watcher(
      async () => {
        if (refuse) throw new StateConflictError('not this host');
        if (failures-- > 0) {
          await delay(50);
          throw new Error('connection reset');
        }
      },
      Buffer.from('initial'),
      dir,
      undefined,
      { ...events, taken: (lagMs) => void lags.push(lagMs) },
    );
    w.start();
    await swtpmWrites('changed');
    await until(() => lags.length === 1, 'the lag of the retried report');
    // The failed try took 50 ms, and the lag counts from the change, not from the retry.
    assert.ok(lags[0]! >= 50, `lag ${lags[0]} ms includes the failed try`);
    refuse = true;
    await swtpmWrites('refused');
    await w.check();
    assert.equal(lags.length, 1, 'a refused report was not taken: no lag');
  });

  it('a report that fails is tried again until it is taken, naming what it follows', async () => {
    const taken: WatchedReport[] = [];
    let failures = 2;
    const w = watcher(async (report) => {
      // The answer was lost: the control plane may have taken it.
      if (failures-- > 0) throw new Error('connection reset');
      taken.push(report);
    }, Buffer.from('initial'));
    w.start();
    await swtpmWrites('changed');
    await until(() => taken.length === 1, 'the retried report');
    assert.equal(taken[0]!.data.toString(), 'changed');
    assert.ok(taken[0]!.after.includes(digestOf(Buffer.from('initial'))));
    assert.ok(taken[0]!.after.includes(digestOf(Buffer.from('changed'))), 'a report whose answer was lost');
  });

  it('the final report is tried until it is taken; a refusal is not tried again', async () => {
    await swtpmWrites('final state');
    let tries = 0;
    const w = watcher(async () => {
      tries += 1;
      if (tries < 3) throw new UnreachableError('vault away');
    });
    await w.close();
    assert.equal(tries, 3);

    let refusals = 0;
    const refused = watcher(async () => {
      refusals += 1;
      throw new StateConflictError('not this host');
    });
    await swtpmWrites('another');
    await refused.close();
    assert.equal(refusals, 1);
  });

  it('a final report still being tried is given up when the agent lets go (it stays in the file)', async () => {
    await swtpmWrites('kept');
    const w = watcher(async () => {
      throw new UnreachableError('never');
    });
    const closing = w.close();
    await delay(50);
    w.abandonReports();
    await assert.rejects(closing, UnreachableError);
  });

  it('without file-system notifications it polls, and still reports', async () => {
    const missing = join(dir, 'not-yet');
    const taken: string[] = [];
    const w = watcher(async (report) => void taken.push(report.data.toString()), undefined, missing);
    w.start();
    await mkdir(missing);
    await swtpmWrites('seen by polling', missing);
    await until(() => taken.includes('seen by polling'), 'the polled change');
  });
});

describe('StateWatcher after taking over a running swtpm', () => {
  it('a first report that did not arrive names no predecessor when retried, and a refusal is never named', async () => {
    await swtpmWrites('changed before the control plane listened');
    const sent: WatchedReport[] = [];
    let calls = 0;
    const w = watcher(async (report) => {
      calls += 1;
      sent.push(report);
      if (calls === 1) throw new UnreachableError('not listening yet');
      if (calls === 2) throw new StateConflictError('refused once');
    });
    await w.check().catch(() => undefined);
    await w.check();
    await swtpmWrites('later');
    await w.check();
    assert.deepEqual(
      sent.map((r) => r.after),
      [[], [], []],
    );
  });

  it('names what the agent before it recorded, and records before each report what the vault may hold', async () => {
    const [taken, lost] = ['taken before the crash', 'sent, its answer lost'].map((t) => digestOf(Buffer.from(t)));
    const records: string[][] = [];
    const lineage: Lineage = { known: [taken!, lost!], record: async (digests) => void records.push([...digests]) };
    await swtpmWrites('changed while no agent watched');
    const sent: string[][] = [];
    let calls = 0;
    const w = watcher(
      async (report) => {
        sent.push(report.after);
        calls += 1;
        if (calls === 1) throw new Error('connection reset');
      },
      undefined,
      dir,
      lineage,
    );
    await w.check().catch(() => undefined);
    await w.check();
    await swtpmWrites('later');
    await w.check();
    const changed = digestOf(Buffer.from('changed while no agent watched'));
    assert.deepEqual(sent, [[taken, lost], [taken, lost, changed], [changed]]);
    assert.deepEqual(records, [
      [taken, lost, changed],
      [taken, lost, changed],
      [changed, digestOf(Buffer.from('later'))],
    ]);
  });

  it('follows the head the vault names in a refusal when it is a state it sent, however many tries ago', async () => {
    let head = digestOf(Buffer.from('initial'));
    const sent: string[][] = [];
    let tries = 0;
    const w = watcher(async ({ data, after }) => {
      sent.push(after);
      tries += 1;
      // The first try is taken but its answer lost; the next ones fail before the vault (its key away).
      if (tries === 1) head = digestOf(data);
      if (tries <= 12) throw new Error(tries === 1 ? 'connection reset' : 'key manager away');
      if (!after.includes(head)) throw new StateConflictError('stale', { head });
      head = digestOf(data);
    }, Buffer.from('initial'));
    for (let i = 0; i < 12; i += 1) {
      await swtpmWrites(`write ${i}`);
      await w.check().catch(() => undefined);
    }
    await swtpmWrites('the last write');
    await w.check();
    assert.equal(head, digestOf(Buffer.from('the last write')), 'the last write is taken');
    assert.deepEqual(sent.at(-1), [digestOf(Buffer.from('write 0'))], 'following the state taken first');
  });
});
