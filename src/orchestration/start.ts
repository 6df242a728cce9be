/**
 * Start: the vTPM runs from the vault's newest generation, verified, never
 * from whatever a host's disk holds; on its host or on `scope.host`. A
 * stopped vTPM's state is in the vault, not on a host, so it may start on
 * any host that offers what it needs (a cold migration is just that), and
 * starts elsewhere by itself when its host is down or draining. The
 * destination of a live migration under way answers with its socket: its
 * QEMU is the one being prepared.
 */
import { randomUUID } from 'node:crypto';
import type { Started } from '../api/vtpms.js';
import type { Principal } from '../auth/policy.js';
import { StateConflictError } from '../errors.js';
import { withKeptSecrets } from '../keys/wiped.js';
import type { VtpmRecord } from '../store/index.js';
import type { StateGeneration } from '../vault/state-vault.js';
import { vaultKeyFrom } from '../vault/state-vault.js';
import type { ControlPlane } from './control-plane.js';
import { runSteps, type Step } from './steps.js';
import { attachmentOf, conflict, firmwareOf, specOf, toVtpmView, withVtpm } from './vtpm-records.js';

/** Which host the caller acts from (the libvirt hook on a host says so): start there, stop only there. */
export interface HostScope {
  host?: string | undefined;
}

interface Starting {
  record: VtpmRecord;
  origin: string;
  /** Where it is to run: its own host, or the one the caller asked for. */
  host: string;
  keep: (secret: Buffer) => Buffer;
  secret?: Buffer;
  tpm?: StateGeneration;
  nvram?: StateGeneration | undefined;
  socket?: string;
  running?: VtpmRecord | undefined;
}

export async function startVtpm(
  cp: ControlPlane,
  vm: string,
  actor: Principal,
  scope: HostScope = {},
): Promise<Started> {
  return withVtpm(cp, vm, actor, { operation: 'operate', host: scope.host }, async (current) => {
    if (current.status === 'migrating' && scope.host !== undefined && scope.host === current.migrating_to) {
      return { ...toVtpmView(current), ...attachmentOf(cp, current, scope.host) };
    }
    if (current.status === 'running') {
      if (scope.host !== undefined && scope.host !== current.host)
        throw conflict(current, `vTPM ${current.vm} is already running on ${current.host}, not ${scope.host}`);
      return { ...toVtpmView(current), ...attachmentOf(cp, current), unchanged: true };
    }
    // Before the secret is read: a start that cannot happen reads nothing.
    if (current.status !== 'stopped')
      throw conflict(current, `vTPM ${current.vm} is ${current.status}; only a stopped vTPM can be started`);
    // What the start records (the secret's read) lands with its claim: one commit before swtpm runs, one after.
    const starting = await withKeptSecrets((keep) =>
      cp.audit.holding(async () => {
        const state: Starting = { record: current, origin: current.host, host: current.host, keep };
        await runSteps({ operation: 'start', steps: startSteps(cp, scope), logger: cp.logger }, state);
        return state;
      }),
    );
    const started = starting.running ?? starting.record;
    cp.logger.info({ vm: started.vm, host: started.host }, 'vTPM started');
    return { ...toVtpmView(started), ...attachmentOf(cp, started) };
  });
}

/**
 * The steps before the claim only read, so that the claim, the move to another host and the audit of the
 * secret's read are one transaction; the start's end and the request's own audit entry are the other.
 */
function startSteps(cp: ControlPlane, scope: HostScope): Array<Step<Starting>> {
  return [
    {
      name: 'choose-host',
      async run(s) {
        if (scope.host === undefined) {
          // Its state is in the vault: a host that is down or draining does not keep it from starting elsewhere.
          if (!(await cp.fleet.keepsItsVtpms(s.origin))) s.host = await cp.fleet.place(specOf(s.record));
          return;
        }
        if (scope.host === s.origin) return;
        await cp.fleet.requireHostFor(specOf(s.record), scope.host);
        s.host = scope.host;
      },
    },
    {
      name: 'read-state',
      async run(s) {
        s.secret = s.keep(await cp.keys.readSecret(s.record.secret_ref));
        const vaultKey = s.keep(vaultKeyFrom(s.secret));
        s.tpm = await cp.vault.newest(s.record.vm, 'tpm', vaultKey);
        if (!s.tpm) throw new StateConflictError(`vTPM ${s.record.vm} has no state in the vault`, { vm: s.record.vm });
        if (firmwareOf(s.record).type !== 'uefi') return;
        s.nvram = await cp.vault.newest(s.record.vm, 'nvram', vaultKey);
        if (!s.nvram) {
          throw new StateConflictError(`UEFI guest ${s.record.vm} has no variable store in the vault`, {
            vm: s.record.vm,
          });
        }
      },
    },
    {
      // The launch is named before it happens: from now on only its reports and its exit count.
      name: 'claim',
      async run(s) {
        const moves = s.host !== s.origin;
        const claimed = await cp.audit.transaction((store) =>
          store.vtpms.update(
            s.record.vm,
            { status: 'starting', instance: randomUUID(), ...(moves && { host: s.host }) },
            ['stopped'],
          ),
        );
        if (!claimed) throw conflict(s.record, `vTPM ${s.record.vm} is no longer stopped (another process moved it)`);
        s.record = claimed;
        if (moves) cp.logger.info({ vm: s.record.vm, host: s.host }, 'vTPM moves to another host while stopped');
      },
      undo: async (s) => {
        const moved = s.record.host !== s.origin;
        await cp.store.vtpms.update(
          s.record.vm,
          { status: 'stopped', socket: null, ...(moved && { host: s.origin }) },
          ['starting'],
        );
      },
    },
    {
      // Before swtpm runs: its first report may come at once.
      name: 'hold-vault-key',
      async run(s) {
        cp.vaultKeys.hold(s.record.vm, vaultKeyFrom(s.secret!));
      },
      undo: async (s) => cp.vaultKeys.drop(s.record.vm),
    },
    {
      name: 'run-swtpm',
      async run(s) {
        const request = {
          vm: s.record.vm,
          instance: s.record.instance!,
          spec: specOf(s.record),
          firmware: firmwareOf(s.record),
          stateKey: s.secret!,
          state: s.tpm!.data,
          nvram: s.nvram?.data,
        };
        const agent = cp.fleet.agentFor(s.record.host);
        try {
          s.socket = (await agent.start(request)).socket;
        } catch (error) {
          // The host may have launched swtpm and then failed (or its answer was lost): none may stay behind.
          await agent
            .stop(s.record.vm)
            .catch((stopError: unknown) =>
              cp.logger.warn({ vm: s.record.vm, err: stopError }, 'a failed start could not be cleaned up on its host'),
            );
          throw error;
        }
      },
      undo: (s) => cp.fleet.agentFor(s.record.host).stop(s.record.vm),
    },
    {
      name: 'mark-running',
      async run(s) {
        s.running = await cp.audit.transaction(
          (store) => store.vtpms.update(s.record.vm, { status: 'running', socket: s.socket! }, ['starting']),
          { answer: true },
        );
      },
    },
  ];
}
