/** The deployment's side of the fleet: its hosts and the provisioning pool, for admins and operators. */
import type { HostStateChanged, HostView, PoolStatus, RegisteredHost } from '../api/hosts.js';
import { enforceOnDeployment, type Principal } from '../auth/policy.js';
import { NotFoundError } from '../errors.js';
import { TPM_VERSIONS } from '../tpm-spec/tpm-spec.js';
import type { ControlPlane } from './control-plane.js';

export async function listHosts(cp: ControlPlane, actor: Principal): Promise<HostView[]> {
  enforceOnDeployment(actor, 'hosts');
  return cp.fleet.list();
}

export async function registerHost(
  cp: ControlPlane,
  name: string,
  url: string,
  actor: Principal,
): Promise<RegisteredHost> {
  enforceOnDeployment(actor, 'hosts-register');
  return cp.fleet.register(name, url);
}

/**
 * Keeps new vTPMs off a host (Nova's `compute service set --disable`): the
 * scheduler passes it over with the admin's reason; the vTPMs it holds keep
 * running and starting there, and an explicit `--host` still reaches it.
 */
export async function setHostDisabled(
  cp: ControlPlane,
  name: string,
  reason: string | null,
  actor: Principal,
): Promise<HostStateChanged> {
  enforceOnDeployment(actor, 'hosts-manage');
  if (!(await cp.store.hosts.setDisabled(name, reason))) throw new NotFoundError('host', name);
  return { name, status: reason === null ? 'enabled' : 'disabled' };
}

/** Ready TPMs per version in the provisioning pool. */
export async function poolStatus(cp: ControlPlane, actor: Principal): Promise<PoolStatus> {
  enforceOnDeployment(actor, 'pool');
  const ready: Record<string, number> = {};
  for (const version of TPM_VERSIONS) ready[version] = await cp.store.pool.count(version);
  return { size: cp.pool?.size ?? 0, refill_pause_ms: cp.pool?.refillPauseMs ?? 0, ready };
}
