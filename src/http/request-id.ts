/**
 * The id that ties together the log lines of one request across processes:
 * the CLI (or any client) sends `X-Request-Id`, every server of the product
 * logs its lines with it as `reqId` and answers with it, and the control
 * plane's own calls to an agent carry the id of the request that made them.
 * An id a client sends is taken only when it is short and plain (it goes
 * into log lines), else the server makes its own.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { FastifyInstance } from 'fastify';
import { REQUEST_ID_HEADER } from '../api/request-id-header.js';

const PLAIN_ID = /^[A-Za-z0-9._:-]{1,64}$/;

/** fastify's `genReqId`: the client's id when it is a plain one. */
export function requestIdOf(request: IncomingMessage): string {
  const sent = request.headers[REQUEST_ID_HEADER];
  return typeof sent === 'string' && PLAIN_ID.test(sent) ? sent : randomUUID();
}

/** Every answer names its request's id, so that a client can quote it and find the server's lines. */
export function answerWithRequestId(app: FastifyInstance): void {
  // A callback, not an async hook: no promise per request.
  app.addHook('onRequest', (request, reply, done) => {
    reply.header(REQUEST_ID_HEADER, request.id);
    done();
  });
}
