/**
 * Requests refused before any route runs, by Node's HTTP parser or by
 * fastify's router, and values no error can print whole: every one is
 * answered in the product's error shape as a 4xx, over a real socket
 * (injection skips the parser).
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { issueToken } from '../auth/tokens.js';
import { openTestControlPlane, type TestControlPlane } from '../orchestration/testing/control-plane-harness.js';
import { buildHttpApi } from './app.js';

let t: TestControlPlane;
let app: FastifyInstance;
let port: number;
let token: string;

before(async () => {
  t = await openTestControlPlane();
  app = await buildHttpApi({ cp: t.cp, logger: pino({ level: 'silent' }), version: 'test' });
  await app.listen({ host: '127.0.0.1', port: 0 });
  port = (app.server.address() as { port: number }).port;
  await t.cp.store.identity.insertUser({ name: 'alice', project: 'p1', roles: ['member'] });
  token = (await issueToken(t.cp.store, 'alice', null)).token;
});
after(async () => {
  await app.close();
  await t.close();
});

/** Sends raw bytes and reads until the server closes or the answer is complete. */
function raw(request: string): Promise<{ status: number; head: string; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let received = '';
    socket.on('data', (chunk) => {
      received += chunk.toString();
      const end = received.indexOf('\r\n\r\n');
      const length = Number(/content-length: (\d+)/i.exec(received)?.[1] ?? Number.NaN);
      if (end >= 0 && received.length >= end + 4 + length) socket.end();
    });
    socket.on('close', () => {
      const end = received.indexOf('\r\n\r\n');
      resolve({
        status: Number(received.slice(9, 12)),
        head: received.slice(0, end),
        body: received.slice(end + 4),
      });
    });
    socket.on('error', reject);
    socket.write(request);
  });
}

const assertProductError = (body: string, code = 'invalid_argument') => {
  const parsed = JSON.parse(body) as { error: { code: string; message: string } };
  assert.equal(parsed.error.code, code);
  assert.equal(typeof parsed.error.message, 'string');
};

describe('requests refused before any route runs', () => {
  it('headers over the limit: 431 in the product shape, and no body for HEAD', async () => {
    const big = `x-big: ${'a'.repeat(20_000)}\r\n`;
    const get = await raw(`GET /v1/vtpms HTTP/1.1\r\nhost: x\r\n${big}\r\n`);
    assert.equal(get.status, 431);
    assertProductError(get.body);
    const head = await raw(`HEAD /v1/vtpms HTTP/1.1\r\nhost: x\r\n${big}\r\n`);
    assert.equal(head.status, 431);
    assert.equal(head.body, '');
  });

  it('bytes that are not HTTP: 400 in the product shape', async () => {
    const answer = await raw('NOT HTTP AT ALL\r\n\r\n');
    assert.equal(answer.status, 400);
    assertProductError(answer.body);
  });

  it('a path parameter over the length limit, or that does not decode: a 4xx in the product shape', async () => {
    for (const path of [`/v1/vtpms/${'a'.repeat(200)}`, '/v1/vtpms/%ff%fe%', '/v1/vtpms/%E0%A4%A']) {
      const answer = await raw(`GET ${path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${token}\r\n\r\n`);
      assert.ok(answer.status >= 400 && answer.status < 500, `${path}: ${answer.status}`);
      assertProductError(answer.body, answer.status === 404 ? 'not_found' : 'invalid_argument');
    }
  });
});

describe('values an error cannot print whole', () => {
  it('a body nested deeper than anything serialises is a 400 naming the field, not a 500', async () => {
    const depth = 100_000;
    const response = await app.inject({
      method: 'POST',
      url: '/v1/vtpms/6f1c2a0e-9b7d-4c3e-8f21-0a1b2c3d4e5f/start',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      payload: '['.repeat(depth) + ']'.repeat(depth),
    });
    assert.equal(response.statusCode, 400, response.body);
    assert.equal(response.json().error.code, 'invalid_argument');
    assert.match(response.json().error.message, /^body: /);
  });

  it('a long value is shown cut short', async () => {
    const response = await app.inject({
      method: 'POST',
      url: '/v1/vtpms',
      headers: { authorization: `Bearer ${token}` },
      payload: { vm: 'b'.repeat(50_000), version: '2.0' },
    });
    assert.equal(response.statusCode, 400);
    assert.match(response.json().error.message, /^vm: /);
    assert.ok(response.body.length < 1000, `${response.body.length} characters`);
  });
});

describe('fields a body schema does not have', () => {
  it('are refused naming the field, not dropped in silence', async () => {
    const response = await app.inject({
      method: 'POST',
      url: '/v1/vtpms',
      headers: { authorization: `Bearer ${token}` },
      payload: { vm: '6f1c2a0e-9b7d-4c3e-8f21-0a1b2c3d4e5f', version: '2.0', secure_bot: true },
    });
    assert.equal(response.statusCode, 400, response.body);
    assert.match(response.json().error.message, /^secure_bot: expected no such field/);
  });
});
