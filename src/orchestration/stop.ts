/**
 * Stop: swtpm exits and its final state reaches the vault before the vTPM
 * is `stopped`. With `scope.host`, only if it runs there: a host's QEMU that
 * went away after a live migration must not stop the vTPM now serving the
 * guest elsewhere. The destination of a migration under way stops its copy,
 * which abandons the migration.
 */
import type { Stopped } from '../api/vtpms.js';
import type { Principal } from '../auth/policy.js';
import type { ControlPlane } from './control-plane.js';
import type { HostScope } from './start.js';
import { runSteps } from './steps.js';
import { conflict, toVtpmView, withVtpm } from './vtpm-records.js';

export async function stopVtpm(
  cp: ControlPlane,
  vm: string,
  actor: Principal,
  scope: HostScope = {},
): Promise<Stopped> {
  return withVtpm(cp, vm, actor, { operation: 'operate', host: scope.host }, async (current) => {
    if (current.status === 'migrating') {
      // The swtpm exits settle a migration: the destination's QEMU leaving abandons it, the source's completes it.
      if (scope.host === undefined) {
        throw conflict(
          current,
          `vTPM ${current.vm} is migrating from ${current.host} to ${current.migrating_to}; ` +
            'it runs on one of them once either QEMU leaves',
        );
      }
      if (scope.host === current.migrating_to) await cp.fleet.agentFor(scope.host).stop(current.vm);
      return toVtpmView(current);
    }
    if (scope.host !== undefined && scope.host !== current.host) return { ...toVtpmView(current), unchanged: true };
    if (current.status === 'stopped') return { ...toVtpmView(current), unchanged: true };
    const state = { stopped: current };
    const steps = [
      {
        name: 'claim',
        async run() {
          if (!(await cp.store.vtpms.update(current.vm, { status: 'stopping' }, ['running']))) {
            throw conflict(current, `vTPM ${current.vm} is ${current.status}; only a running vTPM can be stopped`);
          }
        },
        undo: async () => {
          await cp.store.vtpms.update(current.vm, { status: 'running' }, ['stopping']);
        },
      },
      { name: 'stop-swtpm', run: () => cp.fleet.agentFor(current.host).stop(current.vm) },
      {
        name: 'mark-stopped',
        async run() {
          const stopped = await cp.store.vtpms.update(current.vm, { status: 'stopped', socket: null }, [
            'stopping',
            'stopped',
          ]);
          state.stopped = stopped ?? current;
        },
      },
    ];
    await runSteps({ operation: 'stop', steps, logger: cp.logger }, state);
    cp.logger.info({ vm: current.vm }, 'vTPM stopped');
    return toVtpmView(state.stopped);
  });
}
