/** /v1/hosts and /v1/pool: the fleet as the deployment sees it. */
import type { Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { errorResponses as errors } from '../../api/errors.js';
import { HostList, PoolStatus, RegisteredHost, RegisterHostBody } from '../../api/hosts.js';
import type { ControlPlane } from '../../orchestration/control-plane.js';
import { listHosts, poolStatus, registerHost } from '../../orchestration/hosts.js';
import { actorOf } from './plugin.js';

export function registerHostRoutes(app: FastifyInstance, cp: ControlPlane): void {
  app.get(
    '/pool',
    {
      schema: {
        summary: 'TPMs manufactured ahead of demand, per version',
        tags: ['hosts'],
        response: { 200: PoolStatus, ...errors(401, 403) },
      },
    },
    async (request) => poolStatus(cp, actorOf(request)),
  );

  app.get(
    '/hosts',
    {
      schema: {
        summary: 'Hosts, their traits and load',
        tags: ['hosts'],
        response: { 200: HostList, ...errors(401, 403) },
      },
    },
    async (request) => ({ hosts: await listHosts(cp, actorOf(request)) }),
  );

  app.post<{ Body: Static<typeof RegisterHostBody> }>(
    '/hosts',
    {
      schema: {
        summary: "Register a host whose agent runs remotely (`vtpm agent`); returns the agent's token, once",
        tags: ['hosts'],
        body: RegisterHostBody,
        response: { 201: RegisteredHost, ...errors(400, 401, 403, 409) },
      },
    },
    async (request, reply) => {
      const registered = await registerHost(cp, request.body.name, request.body.url, actorOf(request));
      return reply.status(201).send(registered);
    },
  );
}
