/**
 * Where remote host agents report, under /agent/v1: that they are up
 * (hello, then a heartbeat every few seconds), their vTPMs' state changes and their swtpm exits. An agent
 * authenticates with its host's agent token, not a user's, and speaks only
 * for its own host; its reports go straight to the state ingest.
 */
import type { Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { ExitBody, exitFromWire, fromWire, HelloBody, StateChangeBody } from '../../agent/remote/wire.js';
import { bearerToken } from '../../api/patterns.js';
import type { ControlPlane } from '../../orchestration/control-plane.js';
import { fenceInBackground } from '../../orchestration/fence.js';
import { ingestExit, ingestStateChange } from '../../orchestration/state-ingest.js';
import { handleNotFound } from '../error-handler.js';

type ByHost = { Params: { name: string } };
const hidden = { hide: true };

export const agentApi: FastifyPluginAsync<{ cp: ControlPlane }> = async (app, { cp }) => {
  app.setNotFoundHandler(handleNotFound);
  app.addHook('onRequest', async (request) => {
    const { name } = (request.params ?? {}) as { name?: string };
    cp.fleet.authenticateAgent(name ?? '', bearerToken(request.headers.authorization));
  });

  app.post<ByHost & { Body: HelloBody }>(
    '/hosts/:name/hello',
    { schema: { ...hidden, body: HelloBody } },
    async (request, reply) => {
      await cp.fleet.reportedIn(request.params.name, request.body);
      // A restarted agent took over the swtpms it found: some may serve vTPMs that moved meanwhile.
      fenceInBackground(cp, request.params.name);
      return reply.status(204).send();
    },
  );
  app.post<ByHost>('/hosts/:name/heartbeat', { schema: hidden }, async (request, reply) => {
    if (await cp.fleet.heartbeat(request.params.name)) fenceInBackground(cp, request.params.name);
    return reply.status(204).send();
  });
  app.post<ByHost & { Body: Static<typeof StateChangeBody> }>(
    '/hosts/:name/state-changes',
    { schema: { ...hidden, body: StateChangeBody } },
    async (request, reply) => {
      await ingestStateChange(cp, request.params.name, fromWire(request.body));
      return reply.status(204).send();
    },
  );
  app.post<ByHost & { Body: Static<typeof ExitBody> }>(
    '/hosts/:name/exits',
    { schema: { ...hidden, body: ExitBody } },
    async (request, reply) => {
      await ingestExit(cp, request.params.name, exitFromWire(request.body));
      return reply.status(204).send();
    },
  );
};
