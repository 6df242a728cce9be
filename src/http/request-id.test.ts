/**
 * One id per request across processes: the service takes a plain id a client
 * sends (else makes one), logs with it and answers with it; the CLI's client
 * sends one id with every request of one command, and the control plane's
 * calls to an agent carry the id of the user's request they serve.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { ApiClient } from '../api/client.js';
import { requestContext } from '../audit/audit-log.js';
import { REQUEST_ID_HEADER } from '../api/request-id-header.js';
import { openTestControlPlane, type TestControlPlane } from '../orchestration/testing/control-plane-harness.js';
import { buildHttpApi } from './app.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

let t: TestControlPlane;
let app: FastifyInstance;
const lines: Array<{ reqId?: string; msg?: string; status?: number }> = [];

before(async () => {
  t = await openTestControlPlane();
  const sink = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  app = await buildHttpApi({ cp: t.cp, logger: pino({ level: 'debug' }, sink), version: 'test' });
});
after(async () => {
  await app.close();
  await t.close();
});

describe('request ids', () => {
  it("takes the client's id, answers with it and logs the request's lines with it", async () => {
    const answer = await app.inject({ method: 'GET', url: '/healthz', headers: { [REQUEST_ID_HEADER]: 'cli-42.a:b' } });
    assert.equal(answer.headers[REQUEST_ID_HEADER], 'cli-42.a:b');
    const refused = await app.inject({ method: 'GET', url: '/v1/vtpms', headers: { [REQUEST_ID_HEADER]: 'cli-43' } });
    assert.equal(refused.statusCode, 401);
    assert.equal(refused.headers[REQUEST_ID_HEADER], 'cli-43', 'a refused request names its id too');
    assert.ok(lines.some((l) => l.reqId === 'cli-42.a:b' && l.msg === 'request' && l.status === 200));
    assert.ok(lines.some((l) => l.reqId === 'cli-43' && l.status === 401));
  });

  it('makes its own id when the client sends none, or one that is not plain enough for a log line', async () => {
    for (const sent of [undefined, 'two words', 'x'.repeat(65), 'line\u2028break', '']) {
      const headers = sent === undefined ? {} : { [REQUEST_ID_HEADER]: sent };
      const answer = await app.inject({ method: 'GET', url: '/healthz', headers });
      assert.match(String(answer.headers[REQUEST_ID_HEADER]), UUID, `for ${JSON.stringify(sent)}`);
    }
  });

  it("sends one id with every request of one client (one command), another client's differs", async () => {
    await withServerSeeing(async (url, seen) => {
      const first = await ApiClient.connect({ url, token: 't', dataDir: '/nonexistent' });
      await first.request('GET', '/v1/vtpms');
      await first.request('GET', '/v1/hosts');
      await (await ApiClient.connect({ url, token: 't', dataDir: '/nonexistent' })).request('GET', '/v1/vtpms');
      const ids = seen.map((headers) => headers[REQUEST_ID_HEADER]);
      assert.match(String(ids[0]), UUID);
      assert.equal(ids[1], ids[0]);
      assert.notEqual(ids[2], ids[0]);
    });
  });

  it("carries the user's request id into the control plane's calls to a remote agent, and only those", async () => {
    await withServerSeeing(async (url, seen) => {
      await t.cp.fleet.register('host-r', url);
      const agent = t.cp.fleet.agentFor('host-r');
      const principal = { name: 'alice', project: 'p1', roles: ['member' as const] };
      await requestContext.run({ principal, requestId: 'user-7' }, () => agent.running());
      await agent.running();
      assert.equal(seen[0]?.[REQUEST_ID_HEADER], 'user-7');
      assert.equal(seen[1]?.[REQUEST_ID_HEADER], undefined, 'background work names no user request');
    });
  });
});

/** A server answering `{"running": []}` to anything, which records the headers it was sent. */
async function withServerSeeing(body: (url: string, seen: IncomingHttpHeaders[]) => Promise<void>): Promise<void> {
  const seen: IncomingHttpHeaders[] = [];
  const server = createServer((request, response) => {
    seen.push(request.headers);
    response.setHeader('content-type', 'application/json');
    response.end('{"running":[]}');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    await body(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen);
  } finally {
    server.close();
  }
}
