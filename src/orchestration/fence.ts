/**
 * Fencing a host that comes back. While it was away (down, partitioned, or
 * its agent restarted and took over the swtpms it found), its vTPMs may
 * have been evacuated, started elsewhere or deleted; the swtpms it still
 * runs for them are stale. Their reports are refused already (state-ingest:
 * only the launch the store names as serving is heard), so nothing they say
 * reaches the vault; here each one is stopped, so that no guest goes on
 * writing to a TPM whose state nobody keeps. Its working copy stays on the
 * host, for whoever wants to look at it.
 */
import type { ControlPlane } from './control-plane.js';
import { isDestination, isServing } from './state-ingest.js';

/** Stops every swtpm `host` runs that the store does not name as serving its vTPM there; returns their VMs. */
export async function stopWhatHostNoLongerOwns(cp: ControlPlane, host: string): Promise<string[]> {
  const agent = cp.fleet.agentFor(host);
  const stopped: string[] = [];
  for (const { vm, instance } of await agent.running()) {
    // Under the VM's lock: a start under way on this very host names its launch before swtpm runs.
    await cp.locks.run(vm, async () => {
      const record = await cp.store.vtpms.get(vm);
      if (record && (isServing(record, host, instance) || isDestination(record, host, instance))) return;
      cp.logger.warn(
        { vm, host, instance, servedBy: record?.host ?? null },
        'a swtpm its host no longer owns is stopped (the vTPM moved or went while the host was away)',
      );
      await agent.stop(vm);
      await cp.audit.record({
        operation: 'vtpm.fence',
        vm,
        project: record?.project,
        result: 'ok',
        detail: { host, instance },
      });
      stopped.push(vm);
    });
  }
  return stopped;
}

/** The same, for an agent's route: its answer does not wait, and a failure is logged (the next return tries again). */
export function fenceInBackground(cp: ControlPlane, host: string): void {
  stopWhatHostNoLongerOwns(cp, host).catch((error: unknown) =>
    cp.logger.error({ host, err: error }, 'the swtpms a host no longer owns could not be stopped'),
  );
}
