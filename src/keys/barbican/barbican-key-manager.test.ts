/**
 * Barbican receives raw swtpm keys: an endpoint that would carry them in
 * cleartext off this machine is refused before anything connects.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { InvalidArgumentError } from '../../errors.js';
import { openKeyManager } from '../index.js';
import { BarbicanKeyManager } from './barbican-key-manager.js';

/** A stand-in Barbican on loopback: stores secrets in memory. */
const secrets = new Map<string, Buffer>();
const barbican = createServer((request, response) => {
  const chunks: Buffer[] = [];
  request.on('data', (chunk: Buffer) => chunks.push(chunk));
  request.on('end', () => {
    const payload = /^\/v1\/secrets\/([0-9a-f-]{36})\/payload$/.exec(request.url ?? '')?.[1];
    if (request.method === 'POST' && request.url === '/v1/secrets') {
      const id = randomUUID();
      const body = JSON.parse(Buffer.concat(chunks).toString()) as { payload: string };
      secrets.set(id, Buffer.from(body.payload, 'base64'));
      response.writeHead(201, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ secret_ref: `http://${request.headers.host}/v1/secrets/${id}` }));
    } else if (request.method === 'GET' && payload && secrets.has(payload)) {
      response.writeHead(200, { 'content-type': 'application/octet-stream' }).end(secrets.get(payload));
    } else response.writeHead(404).end();
  });
});
let port: number;

before(async () => {
  await new Promise<void>((resolve) => barbican.listen(0, '127.0.0.1', resolve));
  port = (barbican.address() as AddressInfo).port;
});
after(() => barbican.close());

const refusesCleartext = (error: unknown) =>
  error instanceof InvalidArgumentError &&
  error.message.startsWith('--barbican-url: expected ') &&
  error.message.endsWith('as https://HOST:PORT (http only on loopback) (got "http://barbican.example:9311")');

describe('the Barbican key manager', () => {
  it('refuses http:// off loopback before connecting', async () => {
    assert.throws(() => new BarbicanKeyManager('http://barbican.example:9311'), refusesCleartext);
    // As `vtpm serve --key-manager barbican --barbican-url` opens it.
    await assert.rejects(
      openKeyManager({ kind: 'barbican', dataDir: '/nonexistent', barbicanUrl: 'http://barbican.example:9311' }),
      refusesCleartext,
    );
  });

  it('accepts http:// on loopback, and works through it', async () => {
    const keys = new BarbicanKeyManager(`http://127.0.0.1:${port}`);
    const ref = await keys.createSecret('vtpm-test', { project: 'p1' });
    assert.match(ref, /^barbican:p1:[0-9a-f-]{36}$/);
    assert.equal((await keys.readSecret(ref)).length, 32);
  });
});
