/**
 * The one HTTP client: where it sends a token, and what it says when its
 * server cannot be reached (the CLI's user is told about --url; the control
 * plane calling a host's agent, or an agent its control plane, about the
 * process at that address, not about options it does not have).
 */
import assert from 'node:assert/strict';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { describe, it } from 'node:test';
import { UnreachableError } from '../errors.js';
import { ApiClient } from './client.js';

/** A loopback port nobody listens on (bound, then released). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('ApiClient.connect', () => {
  it('refuses to send a token over plain HTTP off this machine, naming --url', async () => {
    await assert.rejects(ApiClient.connect({ url: 'http://192.0.2.10:8443', dataDir: '/nonexistent', token: 't' }), {
      code: 'invalid_argument',
      message: /--url: .*https:\/\/HOST:PORT \(http only on loopback\)/,
    });
  });

  it('takes https anywhere and http on loopback', async () => {
    for (const url of ['https://192.0.2.10:8443', 'http://127.0.0.1:8443', 'http://[::1]:8443'])
      assert.ok(await ApiClient.connect({ url, dataDir: '/nonexistent', token: 't' }));
  });
});

describe('an unreachable server', () => {
  it("is the CLI's: the hint names --url", async () => {
    const url = `http://127.0.0.1:${await closedPort()}`;
    const client = await ApiClient.connect({ url, token: 'vtpm_x', dataDir: '/nonexistent' });
    await assert.rejects(
      client.request('GET', '/v1/vtpms'),
      (e: unknown) => e instanceof UnreachableError && /ECONNREFUSED.*Set --url/.test(e.message),
    );
  });

  it("is a host agent's: the hint names the process, not the CLI's options", async () => {
    const url = `http://127.0.0.1:${await closedPort()}`;
    const client = await ApiClient.withToken({ url, token: 'agent-token' });
    await assert.rejects(
      client.request('POST', '/agent/v1/vtpms/x/start'),
      (e: unknown) =>
        e instanceof UnreachableError && /ECONNREFUSED.*vtpm agent/.test(e.message) && !/--url/.test(e.message),
    );
  });
  it('speaks https to a plain HTTP server: the hint says no TLS is there, not that nothing runs', async () => {
    const server = createHttpServer((_request, response) => response.end('{}'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as { port: number };
      const client = await ApiClient.connect({ url: `https://127.0.0.1:${port}`, token: 't', dataDir: '/nonexistent' });
      await assert.rejects(
        client.request('GET', '/v1/vtpms'),
        (e: unknown) => e instanceof UnreachableError && /EPROTO.*nothing speaks TLS there/.test(e.message),
      );
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("is the libvirt hook's: its own hint, not the CLI's", async () => {
    const url = `http://127.0.0.1:${await closedPort()}`;
    const unreachableHint = 'the hook calls the URL it was installed with';
    const client = await ApiClient.connect({ url, token: 't', dataDir: '/nonexistent', unreachableHint });
    await assert.rejects(
      client.request('GET', '/v1/vtpms'),
      (e: unknown) =>
        e instanceof UnreachableError && e.message.endsWith(unreachableHint) && !/--url or/.test(e.message),
    );
  });
});
