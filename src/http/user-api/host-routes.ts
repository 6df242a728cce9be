/** /v1/hosts and /v1/pool: the fleet as the deployment sees it. */
import type { Static } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { errorResponses as errors } from '../../api/errors.js';
import {
  DisableHostBody,
  EvacuateHostBody,
  HostVacated,
  HostList,
  HostParams,
  HostStateChanged,
  PoolStatus,
  RegisteredHost,
  RegisterHostBody,
} from '../../api/hosts.js';
import type { ControlPlane } from '../../orchestration/control-plane.js';
import { drainHost } from '../../orchestration/drain.js';
import { evacuateHost } from '../../orchestration/evacuate.js';
import { listHosts, poolStatus, registerHost, setHostDisabled } from '../../orchestration/hosts.js';
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

  app.post<{ Params: Static<typeof HostParams>; Body: Static<typeof DisableHostBody> | undefined }>(
    '/hosts/:name/disable',
    {
      schema: {
        summary: 'Place no new vTPM on the host; those it holds keep running and starting there',
        tags: ['hosts'],
        params: HostParams,
        body: DisableHostBody,
        response: { 200: HostStateChanged, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) =>
      setHostDisabled(cp, request.params.name, request.body?.reason ?? 'disabled by an admin', actorOf(request)),
  );

  app.post<{ Params: Static<typeof HostParams>; Body: Static<typeof DisableHostBody> | undefined }>(
    '/hosts/:name/drain',
    {
      schema: {
        summary:
          'Disable the host and move its vTPMs off it: stopped ones at once, running ones as their VMs leave ' +
          '(again to move those stopped since)',
        tags: ['hosts'],
        params: HostParams,
        body: DisableHostBody,
        response: { 200: HostVacated, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) =>
      drainHost(cp, request.params.name, request.body?.reason ?? 'drained by an admin', actorOf(request)),
  );

  app.post<{ Params: Static<typeof HostParams> }>(
    '/hosts/:name/enable',
    {
      schema: {
        summary: 'Place new vTPMs on the host again (it ends a drain too)',
        tags: ['hosts'],
        params: HostParams,
        response: { 200: HostStateChanged, ...errors(400, 401, 403, 404) },
      },
    },
    async (request) => setHostDisabled(cp, request.params.name, null, actorOf(request)),
  );

  app.post<{ Params: Static<typeof HostParams>; Body: EvacuateHostBody | undefined }>(
    '/hosts/:name/evacuate',
    {
      schema: {
        summary:
          'Move every vTPM off a host that is down: each is fenced off it and stopped on another host, ' +
          "ready to start from the vault's newest generation",
        tags: ['hosts'],
        params: HostParams,
        body: EvacuateHostBody,
        response: { 200: HostVacated, ...errors(400, 401, 403, 404, 409) },
      },
    },
    async (request) => evacuateHost(cp, request.params.name, { to: request.body?.to }, actorOf(request)),
  );
}
