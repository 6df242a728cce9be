/**
 * Reconcile, at start-up: the store is brought in line with what the hosts
 * run. Operations a crash interrupted are finished or rolled back, a live
 * migration the control plane was down for is settled by which swtpms still
 * run, and every vTPM is marked running or stopped as it is.
 */
import type { StateKind, VtpmRecord } from '../store/index.js';
import { withSecret, withWiped } from '../keys/wiped.js';
import { vaultKeyFrom } from '../vault/state-vault.js';
import type { ControlPlane } from './control-plane.js';
import { erase, leaveDeleting } from './delete.js';
import { settleMigration } from './migrate.js';
import { specOf } from './vtpm-records.js';

/** Per host that answered: the vTPMs it runs, with the launch of each. */
type RunningOn = Map<string, Map<string, string>>;

export async function reconcile(cp: ControlPlane): Promise<void> {
  for (const record of await cp.store.vtpms.list({ statuses: ['creating', 'deleting'] })) {
    cp.logger.warn({ vm: record.vm, status: record.status }, 'finishing an operation interrupted by a restart');
    await erase(cp, record).catch((error: unknown) => leaveDeleting(cp, record.vm, error));
  }
  const runningOn = await whatHostsRun(cp);
  const runs = (host: string, vm: string) => runningOn.get(host)?.has(vm) ?? false;
  for (const record of await cp.store.vtpms.list({ statuses: ['migrating'] })) {
    await holdVaultKey(cp, record);
    const to = record.migrating_to;
    const unknown = to === null || !runningOn.has(record.host) || !runningOn.has(to);
    if (unknown || (runs(record.host, record.vm) && runs(to, record.vm))) {
      cp.migrations.begin(record.vm);
      continue;
    }
    await settleMigration(cp, record, to, runs(to, record.vm) ? 'completed' : 'abandoned');
  }
  const gone = await hostsNoLongerHere(cp);
  for (let record of await cp.store.vtpms.list({ statuses: ['starting', 'running', 'stopping', 'stopped'] })) {
    if (gone.has(record.host)) record = await rehome(cp, record);
    const instance = runningOn.get(record.host)?.get(record.vm);
    if (runningOn.has(record.host)) await reconcileOne(cp, record, instance);
  }
}

/**
 * Host names vTPMs are recorded under that are neither connected nor registered: the control plane's own host
 * under another name (a backup restored onto another machine, or the machine renamed). No agent can ever answer
 * for them, so their vTPMs would stay as they are for good.
 */
async function hostsNoLongerHere(cp: ControlPlane): Promise<Set<string>> {
  const registered = new Set((await cp.store.hosts.list()).filter((h) => h.agent_url).map((h) => h.name));
  const recorded = new Set((await cp.store.vtpms.list()).map((record) => record.host));
  return new Set([...recorded].filter((host) => !cp.fleet.isConnected(host) && !registered.has(host)));
}

/**
 * Moved to this control plane's own host, which then reconciles it as its own: a machine renamed still runs
 * its swtpms and holds their working copies; onto a machine restored from a backup, it starts from the vault.
 */
async function rehome(cp: ControlPlane, record: VtpmRecord): Promise<VtpmRecord> {
  const host = cp.fleet.manufacturer.hostName;
  cp.logger.warn(
    { vm: record.vm, status: record.status, from: record.host, to: host },
    "a vTPM recorded on a host that is not part of this deployment is taken as this host's",
  );
  return (await cp.store.vtpms.update(record.vm, { host })) ?? record;
}

/** What a host that does not answer runs is unknown: its vTPMs keep the status they have. */
async function whatHostsRun(cp: ControlPlane): Promise<RunningOn> {
  const runningOn: RunningOn = new Map();
  for (const agent of cp.fleet.connected()) {
    try {
      runningOn.set(agent.hostName, new Map((await agent.running()).map((running) => [running.vm, running.instance])));
    } catch (error) {
      cp.logger.warn(
        { host: agent.hostName, err: error },
        'a host did not say what it runs; its vTPMs are left as they are',
      );
    }
  }
  return runningOn;
}

/** `instance`: the launch its host runs, if it runs it. */
async function reconcileOne(cp: ControlPlane, record: VtpmRecord, instance: string | undefined): Promise<void> {
  const isRunning = instance !== undefined;
  // Only a vTPM that was running can have state the vault has not seen; a `starting` one may
  // still hold an older working copy (from before a restore, say), which must not come back.
  if (!isRunning && (record.status === 'running' || record.status === 'stopping')) {
    try {
      await recoverWorkingState(cp, record);
    } catch (error) {
      await owePendingState(cp, record, error);
      return;
    }
  }
  const status = isRunning ? 'running' : 'stopped';
  // The swtpm the guest talks to is the launch that counts (a row from before launches had ids has none).
  if (record.status !== status || (isRunning && record.instance !== instance)) {
    const socket = isRunning ? cp.fleet.agentFor(record.host).devicePaths(record.vm).socket : null;
    await cp.store.vtpms.update(record.vm, { status, socket, ...(isRunning && { instance }) });
  }
  if (!isRunning) return;
  // Changes made while the control plane was down are committed now.
  await holdVaultKey(cp, record);
  // A report that fails (the key manager away) is retried by its host's watcher; start-up goes on.
  await cp.fleet
    .resyncAfterRestart(record.host, record.vm)
    .catch((error: unknown) =>
      cp.logger.warn({ vm: record.vm, err: error }, 'what changed while the control plane was down is not taken yet'),
    );
}

/**
 * The state a guest left could not be taken (the key manager away, say): the vTPM stays `stopping`, so that
 * no start replaces that working copy with the vault's older head, until a retry takes it.
 */
async function owePendingState(cp: ControlPlane, record: VtpmRecord, error: unknown): Promise<void> {
  cp.logger.error(
    { vm: record.vm, host: record.host, err: error },
    'the state a guest left while the control plane was down could not be taken; the vTPM cannot start ' +
      'until it is (retried)',
  );
  if (record.status !== 'stopping') await cp.store.vtpms.update(record.vm, { status: 'stopping', socket: null });
  cp.retries.schedule(
    `recover ${record.vm}`,
    () =>
      cp.locks.run(record.vm, async () => {
        const current = await cp.store.vtpms.get(record.vm);
        if (current?.status !== 'stopping' || current.host !== record.host) return;
        await recoverWorkingState(cp, current);
        await cp.store.vtpms.update(record.vm, { status: 'stopped' }, ['stopping']);
        cp.logger.info({ vm: record.vm }, 'the state a guest left while the control plane was down is taken');
      }),
    (retryError) => cp.logger.warn({ vm: record.vm, err: retryError }, 'the state a guest left is still not taken'),
  );
}

/** A key that cannot be read now (the key manager away) is read when the vTPM's next report comes. */
async function holdVaultKey(cp: ControlPlane, record: VtpmRecord): Promise<void> {
  try {
    cp.vaultKeys.hold(record.vm, await withSecret(cp.keys, record.secret_ref, vaultKeyFrom));
  } catch (error) {
    cp.logger.warn({ vm: record.vm, err: error }, 'the vault key could not be read at start-up; it is read on demand');
  }
}

/**
 * A vTPM whose guest exited while the control plane was down: its last
 * state is only in the host's working copy. It was started from the vault's
 * head and only moves forward, so a copy that differs from the head is newer.
 */
async function recoverWorkingState(cp: ControlPlane, record: VtpmRecord): Promise<void> {
  const spec = specOf(record);
  const working = await cp.fleet.agentFor(record.host).workingState(record.vm, spec);
  const history = await cp.vault.history(record.vm);
  await withSecret(cp.keys, record.secret_ref, async (secret) => {
    for (const [kind, data] of Object.entries(working) as Array<[StateKind, Buffer]>) {
      // A file that is not a whole state (truncated, damaged) must not become the head; the vault's stays.
      const head = history.find((g) => g.kind === kind);
      const whole =
        kind === 'tpm'
          ? await cp.fleet.manufacturer.stateLoads({ vm: record.vm, spec, stateKey: secret, state: data })
          : head === undefined || head.size === data.length;
      if (!whole) {
        cp.logger.error(
          { vm: record.vm, kind, host: record.host, generation: head?.generation },
          'the state a guest left while the control plane was down is not a whole state: it is not taken, ' +
            'and the vTPM starts from the vault; the file stays on its host',
        );
        continue;
      }
      const generation = await withWiped(vaultKeyFrom(secret), (vaultKey) =>
        cp.vault.commit(record.vm, kind, vaultKey, data, 'stop'),
      );
      if (generation !== undefined) {
        cp.logger.warn(
          { vm: record.vm, kind, generation },
          'committed the state a guest left while the control plane was down',
        );
      }
    }
  });
}
