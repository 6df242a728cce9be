/**
 * OpenStack Barbican as the key manager, as Nova uses it for vTPMs: each
 * vTPM's secret is a Barbican secret (type passphrase) in the owner's
 * project, fetched when needed and kept in memory only. vtpm-manager
 * generates the secret and hands it to Barbican once; Barbican encrypts it
 * under its own key-encryption keys.
 *
 * The project travels in the X-Project-Id header, which is how Barbican
 * identifies the caller behind Keystone's auth middleware or without it.
 * References name the project and the secret: barbican:<project>:<uuid>.
 */
import { randomBytes } from 'node:crypto';
import { requireSecureUrl } from '../../api/secure-url.js';
import { InvalidArgumentError, KeyManagerError } from '../../errors.js';
import { KEY_BYTES } from '../aead.js';
import type { KeyManager, SecretOwner } from '../key-manager.js';

const REF_PATTERN = /^barbican:([^:]+):([0-9a-f-]{36})$/;
const TIMEOUT_MS = 5_000;

export class BarbicanKeyManager implements KeyManager {
  readonly kind = 'barbican';
  readonly ownerScoped = true;

  private readonly endpoint: string;

  /** Refuses, before any connection, an endpoint raw swtpm keys would reach in cleartext. */
  constructor(endpoint: string) {
    const url = requireSecureUrl('--barbican-url', endpoint, "Barbican's endpoint (vTPM secrets travel to it)");
    this.endpoint = url.href.replace(/\/+$/, '');
  }

  private async call(
    method: string,
    path: string,
    project: string,
    body?: unknown,
    accept = 'application/json',
  ): Promise<Response> {
    let response: Response;
    try {
      response = await fetch(`${this.endpoint}${path}`, {
        method,
        headers: {
          'x-project-id': project,
          accept,
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(TIMEOUT_MS),
      });
    } catch (error) {
      const cause =
        (error as Error).name === 'TimeoutError'
          ? `no answer within ${TIMEOUT_MS / 1000} s`
          : ((error as { cause?: { code?: string } }).cause?.code ?? (error as Error).message);
      throw new KeyManagerError(
        `key manager unavailable: Barbican at ${this.endpoint} cannot be reached (${cause}); ` +
          'vTPMs already running keep running',
        { endpoint: this.endpoint },
      );
    }
    if (response.status >= 500)
      throw new KeyManagerError(
        `key manager unavailable: Barbican at ${this.endpoint} answered ${response.status}; ` +
          'vTPMs already running keep running',
        { endpoint: this.endpoint },
      );
    return response;
  }

  createSecret(label: string, owner: SecretOwner): Promise<string> {
    return this.storeSecret(label, owner, randomBytes(KEY_BYTES));
  }

  async storeSecret(label: string, owner: SecretOwner, secret: Buffer): Promise<string> {
    const response = await this.call('POST', '/v1/secrets', owner.project, {
      name: label,
      payload: secret.toString('base64'),
      payload_content_type: 'application/octet-stream',
      payload_content_encoding: 'base64',
      secret_type: 'passphrase',
    });
    if (response.status !== 201)
      throw new KeyManagerError(`Barbican refused to store secret ${label}: HTTP ${response.status}`);
    const { secret_ref: url } = (await response.json()) as { secret_ref: string };
    const id = /\/secrets\/([0-9a-f-]{36})$/.exec(url)?.[1];
    if (!id) throw new KeyManagerError(`Barbican returned an unexpected secret reference for ${label}`);
    return `barbican:${owner.project}:${id}`;
  }

  private parse(ref: string): { project: string; id: string } {
    const match = REF_PATTERN.exec(ref);
    if (!match)
      throw new InvalidArgumentError('secret_ref', 'a Barbican key manager reference (barbican:<project>:<uuid>)', ref);
    return { project: match[1]!, id: match[2]! };
  }

  async readSecret(ref: string): Promise<Buffer> {
    const { project, id } = this.parse(ref);
    const response = await this.call(
      'GET',
      `/v1/secrets/${id}/payload`,
      project,
      undefined,
      'application/octet-stream',
    );
    if (response.status === 404)
      throw new KeyManagerError(`secret ${ref} does not exist in Barbican (or not in project ${project})`, { ref });
    if (response.status !== 200)
      throw new KeyManagerError(`Barbican refused secret ${ref}: HTTP ${response.status}`, { ref });
    const secret = Buffer.from(await response.arrayBuffer());
    if (secret.length !== KEY_BYTES)
      throw new KeyManagerError(`secret ${ref} in Barbican is not a vTPM secret (${secret.length} bytes)`, { ref });
    return secret;
  }

  async deleteSecret(ref: string): Promise<void> {
    const { project, id } = this.parse(ref);
    const response = await this.call('DELETE', `/v1/secrets/${id}`, project);
    if (response.status !== 204 && response.status !== 404)
      throw new KeyManagerError(`Barbican refused to delete secret ${ref}: HTTP ${response.status}`, { ref });
  }

  /** Barbican's secrets list: its API and its database answer (the project is one no vTPM uses). */
  async checkReachable(): Promise<void> {
    const response = await this.call('GET', '/v1/secrets?limit=1', 'vtpm-manager-readiness');
    if (response.status !== 200)
      throw new KeyManagerError(`Barbican at ${this.endpoint} answered HTTP ${response.status} to a secrets list`, {
        endpoint: this.endpoint,
      });
  }

  async close(): Promise<void> {}
}
