/**
 * The one error handler of every HTTP API of the product (the control
 * plane's and the host agent's): typed errors answer with their own status
 * and code, schema failures name the field, anything else is a 500 whose
 * details stay in the log.
 */
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { InternalError, InvalidArgumentError, NotFoundError, VtpmError } from '../errors.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The error code the request ended with, for the audit log. */
    failureCode: string | null;
  }
}

/** Turns a schema validation failure into the product's error, naming the field. */
function validationError(error: FastifyError): InvalidArgumentError {
  const first = error.validation?.[0];
  const params = (first?.params ?? {}) as {
    missingProperty?: string;
    additionalProperty?: string;
    limit?: number;
    type?: string;
    allowedValues?: unknown[];
  };
  const path = (first?.instancePath ?? '').replace(/^\//, '').replaceAll('/', '.');
  const field =
    [path, params.missingProperty ?? params.additionalProperty].filter(Boolean).join('.') ||
    error.validationContext ||
    'request';
  if (params.missingProperty) return new InvalidArgumentError(field, 'a value (it is required)');
  if (params.additionalProperty) return new InvalidArgumentError(field, 'no such field; see /openapi.json');
  const expected: Record<string, string> = {
    minLength: `at least ${params.limit} characters`,
    maxLength: `at most ${params.limit} characters`,
    minimum: `a number of at least ${params.limit}`,
    type: `a value of type ${params.type}`,
    enum: `one of ${(params.allowedValues ?? []).join(', ')}`,
  };
  // The received value is not echoed: it may be a passphrase.
  const fallback = `a value that satisfies: ${first?.message ?? 'the schema'}`;
  return new InvalidArgumentError(field, expected[first?.keyword ?? ''] ?? fallback);
}

function failureOf(error: FastifyError, request: FastifyRequest): VtpmError {
  if (error instanceof VtpmError) return error;
  if (error.validation) return validationError(error);
  if (error.statusCode && error.statusCode < 500) {
    return new InvalidArgumentError('request', 'a well-formed request', error.message);
  }
  request.log.error({ err: error }, 'unexpected error');
  return new InternalError();
}

function handleError(error: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const failure = failureOf(error, request);
  if (failure.status >= 500) request.log.error({ code: failure.code, reason: failure.message }, 'request failed');
  request.failureCode = failure.code;
  void reply.status(failure.status).send({ error: failure.toJSON() });
}

/**
 * What fastify's router refuses before any route or hook runs (a URL
 * component that does not decode, a path parameter over the length limit):
 * fastify hands it here instead of answering in a shape of its own.
 */
export function handleFrameworkError(error: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  handleError(error, request, reply);
}

/**
 * What Node's HTTP parser refuses before fastify sees a request (headers
 * over the size limit, bytes that are not HTTP, a request that takes too
 * long to arrive): answered on the socket, in the product's shape, and the
 * connection closed, since the parser cannot read on from there.
 */
export function handleClientError(error: NodeJS.ErrnoException, socket: Duplex): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, failure] =
    error.code === 'HPE_HEADER_OVERFLOW'
      ? [431, new InvalidArgumentError('headers', 'request headers of at most 16 KiB')]
      : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, new InvalidArgumentError('request', 'a request that arrives in time')]
        : [400, new InvalidArgumentError('request', 'a well-formed HTTP/1.1 request')];
  // The answer to a HEAD request has no body; the parser got far enough to say when it is one.
  const head = (error as { rawPacket?: Buffer }).rawPacket?.subarray(0, 5).toString() === 'HEAD ';
  const body = head ? '' : JSON.stringify({ error: failure.toJSON() });
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy();
}

export function handleNotFound(request: FastifyRequest, reply: FastifyReply): void {
  void reply.status(404).send({ error: new NotFoundError('route', `${request.method} ${request.url}`).toJSON() });
}

/** Installs the error and not-found handlers on an app (or a plugin's context). */
export function useProductErrors(app: FastifyInstance): void {
  if (!app.hasRequestDecorator('failureCode')) app.decorateRequest('failureCode', null);
  app.setErrorHandler(handleError);
  app.setNotFoundHandler(handleNotFound);
}
