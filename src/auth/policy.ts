/**
 * Who may do what: every authorisation decision of the API is made here.
 *
 * Roles, held by users in a project:
 * - member: everything on its own project's vTPMs; nothing else exists for it
 *   (another project's vTPM answers "not found", so nothing leaks).
 * - admin: sees every vTPM and runs the deployment (users, hosts, pool, the
 *   audit log). It neither uses nor destroys another project's TPM.
 * - vtpm-operator: the explicit delegation: may read, operate (start, stop,
 *   restore, change secure boot) and delete another project's vTPM whose secret
 *   security is `deployment`, the mode in which the owner lets the deployment
 *   use the secret (Nova's hw:tpm_secret_security). A vTPM in `user` mode is
 *   used and destroyed by its own project only, whoever asks; nobody but its
 *   project can export it.
 * - libvirt-hook: the qemu hook of one host (user `libvirt-hook@HOST`, made by
 *   `vtpm libvirt install-hook`): may read, and start, stop and prepare
 *   migrations of, its project's vTPMs and other projects' whose secret
 *   security lets the service use the secret (`host`, `deployment`); an
 *   operation only where it names the host it acts on and that host is its
 *   own (so not restore or secure boot). Nothing else, on the deployment either.
 */
import { ForbiddenError, NotFoundError } from '../errors.js';
import type { SecretSecurity } from '../tpm-spec/secret-security.js';

export const ROLES = ['member', 'admin', 'vtpm-operator', 'libvirt-hook'] as const;
export type Role = (typeof ROLES)[number];

/** Operations on one vTPM. */
export const VTPM_OPERATIONS = ['read', 'operate', 'export', 'delete'] as const;
export type VtpmOperation = (typeof VTPM_OPERATIONS)[number];

/** Operations on the deployment, or in the caller's own project. */
export const DEPLOYMENT_OPERATIONS = [
  'create',
  'list',
  'hosts',
  'hosts-register',
  'hosts-manage',
  'evacuate',
  'pool',
  'users',
  'keys',
  'backup',
  'audit-read',
  'audit-verify',
] as const;
export type DeploymentOperation = (typeof DEPLOYMENT_OPERATIONS)[number];

export interface Principal {
  name: string;
  project: string;
  roles: readonly Role[];
}

export interface VtpmTarget {
  vm: string;
  project: string;
  secretSecurity: SecretSecurity;
  /** The host the operation acts on, when it acts on one (start, stop, a migration's destination). */
  host?: string | undefined;
}

const HOOK_ROLE = 'libvirt-hook';
const HOOK_USER_PREFIX = `${HOOK_ROLE}@`;

/** The user a host's libvirt hook acts as. */
export const libvirtHookUser = (host: string): string => `${HOOK_USER_PREFIX}${host}`;

/** The one host a principal's operations are confined to: a libvirt hook's own. */
function hostScopeOf(principal: Principal): string | undefined {
  if (!has(principal, HOOK_ROLE)) return undefined;
  return principal.name.startsWith(HOOK_USER_PREFIX) ? principal.name.slice(HOOK_USER_PREFIX.length) : '';
}

export type Decision = 'allow' | 'forbid' | 'hide';

const has = (principal: Principal, role: Role) => principal.roles.includes(role);

export function decideOnVtpm(principal: Principal, operation: VtpmOperation, target: VtpmTarget): Decision {
  const scope = hostScopeOf(principal);
  if (scope !== undefined) {
    if (target.project !== principal.project && target.secretSecurity === 'user') return 'hide';
    if (operation === 'read') return 'allow';
    return operation === 'operate' && scope !== '' && target.host === scope ? 'allow' : 'forbid';
  }
  if (target.project === principal.project) return 'allow';
  const admin = has(principal, 'admin');
  const delegated = has(principal, 'vtpm-operator') && target.secretSecurity === 'deployment';
  switch (operation) {
    case 'read':
      return admin || delegated ? 'allow' : 'hide';
    // One rule for using and for destroying another project's TPM: its owner delegated the secret to the
    // deployment (secret security `deployment`), and the caller holds the role for it. Seeing it is not enough.
    case 'operate':
    case 'delete':
      return delegated ? 'allow' : admin ? 'forbid' : 'hide';
    case 'export':
      return admin || delegated ? 'forbid' : 'hide';
  }
}

export function decideOnDeployment(principal: Principal, operation: DeploymentOperation): Decision {
  if (hostScopeOf(principal) !== undefined) return 'forbid';
  switch (operation) {
    case 'create':
    case 'list':
    case 'audit-read':
    // What moves is decided per vTPM: each as its `operate` allows (see orchestration/evacuate.ts).
    case 'evacuate':
      return 'allow';
    case 'hosts':
    case 'pool':
      return has(principal, 'admin') || has(principal, 'vtpm-operator') ? 'allow' : 'forbid';
    case 'users':
    case 'keys':
    case 'backup':
    case 'audit-verify':
    case 'hosts-register':
    case 'hosts-manage':
      return has(principal, 'admin') ? 'allow' : 'forbid';
  }
}

/** Whether the principal sees every project's vTPMs and events, or its own project's only. */
export function seesAllProjects(principal: Principal): boolean {
  return has(principal, 'admin');
}

/** Throws the error a decision stands for: 404 when the vTPM must not even be seen to exist. */
export function enforceOnVtpm(principal: Principal, operation: VtpmOperation, target: VtpmTarget): void {
  const decision = decideOnVtpm(principal, operation, target);
  if (decision === 'hide') throw new NotFoundError('vTPM for VM', target.vm);
  if (decision === 'forbid') {
    const scope = hostScopeOf(principal);
    const why =
      scope !== undefined
        ? `a libvirt hook only starts and stops vTPMs on its own host (${scope || 'none'})` +
          (target.host === undefined ? '' : `, not on ${target.host}`)
        : target.secretSecurity === 'user'
          ? `its secret is bound to project ${target.project} (secret security "user")`
          : operation === 'operate' || operation === 'delete'
            ? 'this needs the vtpm-operator role'
            : `only project ${target.project} may ${operation} it`;
    throw new ForbiddenError(`${principal.name} may not ${operation} the vTPM of VM ${target.vm}: ${why}`, {
      vm: target.vm,
      operation,
    });
  }
}

/** How a refusal names each operation: "alice may not list hosts". */
const DEPLOYMENT_ACTIONS: Record<DeploymentOperation, string> = {
  create: 'create vTPMs',
  list: 'list vTPMs',
  hosts: 'list hosts',
  'hosts-register': 'register hosts',
  'hosts-manage': 'disable, drain and enable hosts',
  evacuate: 'evacuate hosts',
  pool: 'see the provisioning pool',
  users: 'manage users',
  keys: 'rotate keys',
  'audit-read': 'read the audit log',
  'audit-verify': 'verify the audit log',
  backup: 'back up the deployment',
};

export function enforceOnDeployment(principal: Principal, operation: DeploymentOperation): void {
  if (decideOnDeployment(principal, operation) === 'forbid') {
    const action = DEPLOYMENT_ACTIONS[operation];
    const role = operation === 'hosts' || operation === 'pool' ? 'admin or vtpm-operator' : 'admin';
    const why =
      hostScopeOf(principal) === undefined
        ? `this needs the ${role} role`
        : 'a libvirt hook only starts and stops vTPMs on its own host';
    throw new ForbiddenError(`${principal.name} may not ${action}: ${why}`, { operation });
  }
}
