import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ForbiddenError, NotFoundError } from '../errors.js';
import {
  decideOnDeployment,
  decideOnVtpm,
  DEPLOYMENT_OPERATIONS,
  enforceOnDeployment,
  enforceOnVtpm,
  VTPM_OPERATIONS,
  type Decision,
  type Principal,
  type VtpmTarget,
} from './policy.js';

const principals: Record<string, Principal> = {
  member: { name: 'alice', project: 'p1', roles: ['member'] },
  admin: { name: 'root', project: 'ops', roles: ['admin'] },
  operator: { name: 'oscar', project: 'ops', roles: ['vtpm-operator'] },
  'admin+operator': { name: 'olga', project: 'ops', roles: ['admin', 'vtpm-operator'] },
  'libvirt-hook': { name: 'libvirt-hook@host-a', project: 'ops', roles: ['libvirt-hook'] },
};

/** The target each principal's own project holds, and two of another project's. */
const targets = (own: string): Record<string, VtpmTarget> => ({
  own: { vm: 'vm-own', project: own, secretSecurity: 'user' },
  'other, user mode': { vm: 'vm-u', project: 'p2', secretSecurity: 'user' },
  'other, deployment mode': { vm: 'vm-d', project: 'p2', secretSecurity: 'deployment' },
});

// Written out by hand, row by row: the test must not derive its expectations from the code under test.
const A = 'allow',
  F = 'forbid',
  H = 'hide';
const vtpmTable: Record<string, Record<string, Record<string, Decision>>> = {
  member: {
    own: { read: A, operate: A, export: A, delete: A },
    'other, user mode': { read: H, operate: H, export: H, delete: H },
    'other, deployment mode': { read: H, operate: H, export: H, delete: H },
  },
  admin: {
    own: { read: A, operate: A, export: A, delete: A },
    'other, user mode': { read: A, operate: F, export: F, delete: F },
    'other, deployment mode': { read: A, operate: F, export: F, delete: F },
  },
  operator: {
    own: { read: A, operate: A, export: A, delete: A },
    'other, user mode': { read: H, operate: H, export: H, delete: H },
    'other, deployment mode': { read: A, operate: A, export: F, delete: A },
  },
  'admin+operator': {
    own: { read: A, operate: A, export: A, delete: A },
    'other, user mode': { read: A, operate: F, export: F, delete: F },
    'other, deployment mode': { read: A, operate: A, export: F, delete: A },
  },
  // These targets name no host: operations that do not act on one (restore, secure boot) are not a hook's.
  'libvirt-hook': {
    own: { read: A, operate: F, export: F, delete: F },
    'other, user mode': { read: H, operate: H, export: H, delete: H },
    'other, deployment mode': { read: A, operate: F, export: F, delete: F },
  },
};

const deploymentTable: Record<string, Record<string, Decision>> = {
  member: {
    create: A,
    list: A,
    hosts: F,
    'hosts-register': F,
    'hosts-manage': F,
    evacuate: A,
    pool: F,
    users: F,
    keys: F,
    backup: F,
    'audit-read': A,
    'audit-verify': F,
  },
  admin: {
    create: A,
    list: A,
    hosts: A,
    'hosts-register': A,
    'hosts-manage': A,
    evacuate: A,
    pool: A,
    users: A,
    keys: A,
    backup: A,
    'audit-read': A,
    'audit-verify': A,
  },
  operator: {
    create: A,
    list: A,
    hosts: A,
    'hosts-register': F,
    'hosts-manage': F,
    evacuate: A,
    pool: A,
    users: F,
    keys: F,
    backup: F,
    'audit-read': A,
    'audit-verify': F,
  },
  'admin+operator': {
    create: A,
    list: A,
    hosts: A,
    'hosts-register': A,
    'hosts-manage': A,
    evacuate: A,
    pool: A,
    users: A,
    keys: A,
    backup: A,
    'audit-read': A,
    'audit-verify': A,
  },
  'libvirt-hook': {
    create: F,
    list: F,
    hosts: F,
    'hosts-register': F,
    'hosts-manage': F,
    evacuate: F,
    pool: F,
    users: F,
    keys: F,
    backup: F,
    'audit-read': F,
    'audit-verify': F,
  },
};

describe('policy: every role x operation on a vTPM', () => {
  for (const [role, principal] of Object.entries(principals)) {
    for (const [where, target] of Object.entries(targets(principal.project))) {
      for (const operation of VTPM_OPERATIONS) {
        const expected = vtpmTable[role]![where]![operation]!;
        it(`${role} / ${where} / ${operation}: ${expected}`, () =>
          assert.equal(decideOnVtpm(principal, operation, target), expected));
      }
    }
  }
});

describe('policy: every role x deployment operation', () => {
  for (const [role, principal] of Object.entries(principals)) {
    for (const operation of DEPLOYMENT_OPERATIONS) {
      const expected = deploymentTable[role]![operation]!;
      it(`${role} / ${operation}: ${expected}`, () => assert.equal(decideOnDeployment(principal, operation), expected));
    }
  }
});

describe('policy: enforcement', () => {
  it("hides another project's vTPM as not found, naming only the VM asked for", () => {
    assert.throws(
      () => enforceOnVtpm(principals.member!, 'read', targets('p1')['other, user mode']!),
      (error: unknown) => error instanceof NotFoundError && /vm-u/.test(error.message) && !/p2/.test(error.message),
    );
  });

  it('says why a visible vTPM is forbidden', () => {
    assert.throws(
      () => enforceOnVtpm(principals.admin!, 'operate', targets('ops')['other, user mode']!),
      (error: unknown) => error instanceof ForbiddenError && /secret is bound to project p2/.test(error.message),
    );
  });

  it('confines a libvirt hook to operations on its own host, and says so', () => {
    const hook = principals['libvirt-hook']!;
    const own = { ...targets('ops').own!, host: 'host-a' };
    assert.equal(decideOnVtpm(hook, 'operate', own), 'allow');
    assert.equal(decideOnVtpm(hook, 'operate', { ...targets('ops')['other, deployment mode']!, host: 'host-a' }), A);
    assert.equal(decideOnVtpm(hook, 'delete', own), 'forbid');
    assert.throws(
      () => enforceOnVtpm(hook, 'operate', { ...own, host: 'host-b' }),
      (error: unknown) =>
        error instanceof ForbiddenError &&
        /only starts and stops vTPMs on its own host \(host-a\), not on host-b/.test(error.message),
    );
    // The role without a hook's name is confined to no host at all.
    const misnamed = { name: 'mallory', project: 'ops', roles: ['libvirt-hook'] as const };
    assert.equal(decideOnVtpm(misnamed, 'operate', { ...own, host: '' }), 'forbid');
    assert.equal(decideOnVtpm({ ...misnamed, roles: ['libvirt-hook', 'admin'] }, 'operate', own), 'forbid');
  });
});

describe('refusals of deployment operations', () => {
  it('name what was refused in words, and the role it needs', () => {
    const alice = principals.member!;
    assert.throws(() => enforceOnDeployment(alice, 'hosts'), {
      message: 'alice may not list hosts: this needs the admin or vtpm-operator role',
    });
    assert.throws(() => enforceOnDeployment(alice, 'audit-verify'), {
      message: 'alice may not verify the audit log: this needs the admin role',
    });
  });
});
