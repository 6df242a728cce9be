/**
 * The control plane's HTTP server: the users' API under /v1 and the agents'
 * under /agent/v1, each a plugin with its own authentication, sharing one
 * error handler; the OpenAPI document at /openapi.json is generated from the
 * schemas that validate requests (src/api).
 */
import swagger from '@fastify/swagger';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { AGENT_API } from '../agent/remote/wire.js';
import { ErrorBody } from '../api/errors.js';
import { Vtpm } from '../api/vtpms.js';
import { readControlPlaneGauges } from '../metrics/control-plane-gauges.js';
import type { ControlPlane } from '../orchestration/control-plane.js';
import { agentApi } from './agent-api/plugin.js';
import { useProductErrors } from './error-handler.js';
import { serveMetrics } from './metrics-endpoint.js';
import { serveReadiness } from './readiness.js';
import { answerWithRequestId } from './request-id.js';
import { productServerOptions } from './server-options.js';
import { userApi } from './user-api/plugin.js';

export interface HttpOptions {
  cp: ControlPlane;
  logger: Logger;
  version: string;
  https?: { cert: Buffer; key: Buffer } | undefined;
}

const BODY_LIMIT = 1024 * 1024;

export async function buildHttpApi(options: HttpOptions): Promise<FastifyInstance> {
  const app = Fastify({
    ...productServerOptions(options.logger, BODY_LIMIT),
    ...(options.https && { https: options.https }),
  }) as unknown as FastifyInstance;
  answerWithRequestId(app);

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'vtpm-manager', version: options.version, description: 'Virtual TPMs for virtual machine fleets' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });
  app.addSchema(ErrorBody);
  app.addSchema(Vtpm);
  useProductErrors(app);
  // A callback, not an async hook: no promise per request for a line the default level drops.
  app.addHook('onResponse', (request, reply, done) => {
    request.log.debug(
      {
        method: request.method,
        route: request.routeOptions.url ?? null,
        status: reply.statusCode,
        ms: reply.elapsedTime,
      },
      'request',
    );
    done();
  });

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  app.get('/healthz', { schema: { hide: true } }, async () => ({ status: 'ok' }));
  serveReadiness(app, options.cp);
  serveMetrics(app, options.cp.metrics, () => readControlPlaneGauges(options.cp.store, options.cp.metrics));
  await app.register(userApi, { prefix: '/v1', cp: options.cp });
  await app.register(agentApi, { prefix: AGENT_API, cp: options.cp });
  return app;
}
