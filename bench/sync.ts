/**
 * Sync lag: from the rename of a running vTPM's state file to the commit of
 * the generation in the vault, for 1, 50 and 200 running vTPMs whose state
 * changes continuously (each once a second). The vTPMs are real: created and
 * started through the API of an in-process `vtpm serve`, each with its swtpm.
 * The writer stands in for swtpm's own write: it writes a temporary file and
 * renames it over the state file, exactly the system calls swtpm makes, so
 * that the benchmark can drive 200 TPMs' changes without 200 guests.
 *
 * Anchors, same run: the bare file-system notification latency for the same
 * renames (what any watcher pays before doing anything), and plain SQLite
 * inserts of the same bytes with the same durability (what any commit pays).
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import Sqlite from 'better-sqlite3';
import { Store } from '../src/store/index.js';
import { sqliteDialect } from '../src/store/sqlite/sqlite-dialect.js';
import { StateVault, vaultKeyFrom } from '../src/vault/state-vault.js';
import { benchRoot, inBatches, serveInProcess } from './harness.js';
import { p99OrMax, summarize, table, type Summary } from './stats.js';
import { DEFAULT_RETENTION } from '../src/vault/retention.js';

const SCALES = [1, 50, 200];
const DURATION_MS = 10_000;
const PERIOD_MS = 1_000;
const STATE_BYTES = 6_172;
const COMMITS = 400;

const digest = (data: Buffer) => createHash('sha256').update(data).digest('hex');

interface Rename {
  dir: string;
  digest: string;
  at: number;
}

/** Renames fresh content over `<dir>/<file>` in every dir, each once per period, staggered. */
async function writeContinuously(dirs: string[], file: string): Promise<Rename[]> {
  const renames: Rename[] = [];
  const until = Date.now() + DURATION_MS;
  await Promise.all(
    dirs.map(async (dir) => {
      await delay(Math.random() * PERIOD_MS);
      while (Date.now() < until) {
        const data = randomBytes(STATE_BYTES);
        const temporary = join(dir, `TMP-${file}`);
        await writeFile(temporary, data);
        const at = Date.now();
        await rename(temporary, join(dir, file));
        renames.push({ dir, digest: digest(data), at });
        await delay(PERIOD_MS);
      }
    }),
  );
  return renames;
}

/** The anchor: how long the kernel and Node take to tell a watcher about the same renames. */
async function notificationAnchor(root: string, count: number): Promise<Summary> {
  const dirs = await Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const dir = join(root, `watch-${count}-${i}`);
      await mkdir(dir, { recursive: true });
      return dir;
    }),
  );
  const notified = new Map<string, number[]>(dirs.map((dir) => [dir, []]));
  const watchers: FSWatcher[] = dirs.map((dir) =>
    watch(dir, (_event, name) => {
      if (name === 'state.permall') notified.get(dir)!.push(Date.now());
    }),
  );
  const renames = await writeContinuously(dirs, 'state.permall');
  await delay(500);
  for (const watcher of watchers) watcher.close();
  // Each rename pairs with the first notification in its directory at or after it.
  const lags = renames.flatMap(({ dir, at }) => {
    const first = notified.get(dir)!.find((t) => t >= at);
    return first === undefined ? [] : [first - at];
  });
  return summarize(lags);
}

async function commitThroughput(root: string): Promise<{ vault: number; anchor: number }> {
  const store = await Store.open(sqliteDialect(join(root, 'throughput.sqlite')));
  const vault = new StateVault(store, DEFAULT_RETENTION);
  const key = vaultKeyFrom(randomBytes(32));
  const vm = randomUUID();
  let started = performance.now();
  for (let i = 0; i < COMMITS; i += 1) await vault.commit(vm, 'tpm', key, randomBytes(STATE_BYTES), 'sync');
  const vaultRate = COMMITS / ((performance.now() - started) / 1000);
  await store.close();

  const raw = new Sqlite(join(root, 'anchor.sqlite'));
  raw.pragma('journal_mode = WAL');
  raw.pragma('synchronous = FULL');
  raw.exec('CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL)');
  const insert = raw.prepare('INSERT INTO blobs (data) VALUES (?)');
  started = performance.now();
  for (let i = 0; i < COMMITS; i += 1) insert.run(randomBytes(STATE_BYTES));
  const anchorRate = COMMITS / ((performance.now() - started) / 1000);
  raw.close();
  return { vault: vaultRate, anchor: anchorRate };
}

export async function runSyncBenchmark(): Promise<{ table: string; results: unknown }> {
  const root = await benchRoot();
  const dataDir = join(root, 'data');
  const { server, api } = await serveInProcess(dataDir, 0);
  const database = new Sqlite(join(dataDir, 'vtpm.sqlite'), { readonly: true });
  const rows: Array<Record<string, string | number>> = [];
  const results: Record<string, unknown> = {};
  const vms = Array.from({ length: Math.max(...SCALES) }, () => randomUUID());
  try {
    process.stderr.write(`creating ${vms.length} vTPMs...\n`);
    await inBatches(vms, 4, async (vm) => void (await api('POST', '/v1/vtpms', { vm, version: '2.0' })));
    let running = 0;
    for (const scale of SCALES) {
      await inBatches(vms.slice(running, scale), 8, async (vm) => void (await api('POST', `/v1/vtpms/${vm}/start`)));
      running = scale;
      process.stderr.write(`${scale} running: writing for ${DURATION_MS / 1000} s...\n`);
      const since = new Date().toISOString();
      const renamed = await writeContinuously(
        vms.slice(0, scale).map((vm) => join(dataDir, 'tpm', vm)),
        'tpm2-00.permall',
      );
      await delay(1500);
      const committed = database
        .prepare("SELECT digest, created_at FROM state_generations WHERE reason = 'sync' AND created_at >= ?")
        .all(since) as Array<{ digest: string; created_at: string }>;
      const commitTimes = new Map(committed.map((c) => [c.digest, Date.parse(c.created_at)]));
      const lags = renamed.flatMap(({ digest: d, at }) => (commitTimes.has(d) ? [commitTimes.get(d)! - at] : []));
      const sync = summarize(lags);
      const anchor = await notificationAnchor(root, scale);
      results[`running_${scale}`] = {
        changes: renamed.length,
        committed: lags.length,
        sync_lag_ms: sync,
        notification_anchor_ms: anchor,
      };
      rows.push({
        running: scale,
        changes: renamed.length,
        committed: lags.length,
        'lag p50 ms': sync.p50,
        'lag p99 ms': p99OrMax(sync, 0),
        'lag max ms': sync.max,
        'anchor p50': anchor.p50,
        'anchor p99': p99OrMax(anchor, 0),
        'p99 / anchor':
          sync.p99 === undefined || anchor.p99 === undefined
            ? 'n < 100'
            : (sync.p99 / Math.max(1, anchor.p99)).toFixed(1),
      });
    }
    const throughput = await commitThroughput(root);
    results.commit_throughput_per_s = throughput;
    return {
      table:
        `${table(rows)}\n\nvault commits/s (6 KB, envelope-encrypted, durable): ${throughput.vault.toFixed(0)}; ` +
        `anchor, plain SQLite inserts of the same bytes: ${throughput.anchor.toFixed(0)} ` +
        `(ratio ${(throughput.vault / throughput.anchor).toFixed(2)})`,
      results,
    };
  } finally {
    database.close();
    await inBatches(vms, 8, async (vm) => void (await api('DELETE', `/v1/vtpms/${vm}?force=true`)));
    await server.close();
    await rm(root, { recursive: true, force: true });
  }
}
