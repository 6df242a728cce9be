/**
 * Who the fuzz speaks as, against one `vtpm serve`: two admins, a member of
 * another project, a remote host's agent, and a vTPM to aim at. Fuzzed
 * requests revoke tokens, delete users, re-register hosts and delete vTPMs
 * as often as they are allowed to; `heal` makes again what was lost, so the
 * rest of a run still has every identity.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ServiceUnderTest } from '../../e2e/support/service.js';
import type { Credential } from './requests.js';
import { seededUuid } from './settings.js';

/** A JSON request of the test's own (setting up and repairing identities), not a fuzzed one. */
export async function apiCall(
  base: string,
  token: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body !== undefined && { 'content-type': 'application/json' }),
    },
    ...(body !== undefined && { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(30_000),
  });
  const text = await response.text();
  return { status: response.status, json: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

interface User {
  name: string;
  project: string;
  roles: string[];
  token: string;
}

export class Identities {
  readonly users: User[] = [
    { name: 'fuzz-admin-a', project: 'ops', roles: ['admin'], token: '' },
    { name: 'fuzz-admin-b', project: 'ops', roles: ['admin'], token: '' },
    { name: 'fuzz-member', project: 'fuzz-other', roles: ['member'], token: '' },
  ];
  agentToken = '';
  readonly agentHost = 'fuzz-host';
  /** The vTPM fuzzed requests aim at, owned by the admins' project. */
  readonly target = seededUuid('target');
  heals = 0;

  private constructor(
    private readonly base: string,
    private readonly bootstrap: string,
  ) {}

  /** Identities on `service`, made with the admin token `vtpm serve` wrote into its data directory. */
  static async open(service: ServiceUnderTest): Promise<Identities> {
    const bootstrap = (await readFile(join(service.dataDir, 'admin.token'), 'utf8')).trim();
    const identities = new Identities(service.url, bootstrap);
    await identities.heal();
    return identities;
  }

  get admin(): User {
    return this.users[0]!;
  }

  get member(): User {
    return this.users[2]!;
  }

  /** Real values of the service, which reach deeper than random ones. */
  get known(): string[] {
    return [
      this.target,
      seededUuid('absent'),
      ...this.users.map((u) => u.name),
      ...this.users.map((u) => u.project),
      'admin',
      this.agentHost,
    ];
  }

  private call(token: string, method: string, path: string, body?: unknown) {
    return apiCall(this.base, token, method, path, body);
  }

  private async works(token: string): Promise<boolean> {
    return (await this.call(token, 'GET', '/v1/vtpms')).status === 200;
  }

  private async anyAdmin(): Promise<string> {
    for (const token of [...this.users.filter((u) => u.roles.includes('admin')).map((u) => u.token), this.bootstrap])
      if (token && (await this.works(token))) return token;
    assert.fail('the fuzz revoked every admin token at once');
  }

  private async provision(user: User): Promise<void> {
    const admin = await this.anyAdmin();
    const issued = await this.call(admin, 'POST', `/v1/users/${user.name}/tokens`, {});
    if (issued.status === 201) {
      user.token = issued.json.token as string;
      return;
    }
    const { name, project, roles } = user;
    const created = await this.call(admin, 'POST', '/v1/users', { name, project, roles });
    assert.equal(created.status, 201, `user ${user.name} could not be made again: ${JSON.stringify(created.json)}`);
    user.token = created.json.token as string;
  }

  private async agentWorks(): Promise<boolean> {
    const response = await fetch(`${this.base}/agent/v1/hosts/${this.agentHost}/hello`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.agentToken}`, 'content-type': 'application/json' },
      body: '{}',
    });
    await response.arrayBuffer();
    return response.status !== 401;
  }

  async heal(): Promise<void> {
    for (const user of this.users) if (!user.token || !(await this.works(user.token))) await this.provision(user);
    if (!this.agentToken || !(await this.agentWorks())) {
      const url = 'http://127.0.0.1:9';
      const registered = await this.call(this.admin.token, 'POST', '/v1/hosts', { name: this.agentHost, url });
      assert.equal(registered.status, 201, JSON.stringify(registered.json));
      this.agentToken = registered.json.token as string;
    }
    if ((await this.call(this.admin.token, 'GET', `/v1/vtpms/${this.target}`)).status === 404) {
      const created = await this.call(this.admin.token, 'POST', '/v1/vtpms', { vm: this.target, version: '2.0' });
      assert.equal(created.status, 201, JSON.stringify(created.json));
    }
    this.heals += 1;
  }

  /** The Authorization header of a credential, with the tokens as they are now. */
  authorization(credential: Credential): string | undefined {
    if (typeof credential === 'object') return credential.garbage;
    if (credential === 'none') return undefined;
    const token =
      credential === 'agent' ? this.agentToken : credential === 'admin' ? this.admin.token : this.member.token;
    return `Bearer ${token}`;
  }

  /** Deletes every vTPM (stopping their swtpms), before the service stops. */
  async deleteAllVtpms(): Promise<void> {
    const { json } = await this.call(this.admin.token, 'GET', '/v1/vtpms');
    for (const vtpm of json.vtpms as Array<{ vm: string }>)
      await this.call(this.admin.token, 'DELETE', `/v1/vtpms/${vtpm.vm}?force=true`);
  }
}
