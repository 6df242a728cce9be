/**
 * Where remote host agents report to: that they are up (hello), their vTPMs'
 * state changes and their swtpm exits. Outside /v1, as the users' API is:
 * an agent authenticates with its host's agent token, not a user's, and may
 * speak only for its own host.
 */
import type { Static } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { HostDescription } from '../agent/host-agent.js';
import { AGENT_API, ExitBody, exitFromWire, fromWire, StateChangeBody } from '../agent/remote/wire.js';
import { UnauthenticatedError } from '../errors.js';
import type { VtpmService } from './vtpm-service.js';

export function registerAgentRoutes(app: FastifyInstance, service: VtpmService): void {
  const agentOf = (request: FastifyRequest<{ Params: { name: string } }>) => {
    const token = /^Bearer\s+(\S+)$/i.exec(request.headers.authorization ?? '')?.[1];
    const agent = service.remoteAgent(request.params.name);
    if (!token || !agent?.accepts(token)) throw new UnauthenticatedError(`not host ${request.params.name}'s agent token: an agent reports with the token \`vtpm host add\` issued for its host`);
    return agent;
  };
  const hide = { hide: true };

  app.post<{ Params: { name: string }; Body: HostDescription }>(`${AGENT_API}/hosts/:name/hello`, { schema: hide }, async (request, reply) => {
    await service.agentReportedIn(agentOf(request), request.body);
    return reply.status(204).send();
  });
  app.post<{ Params: { name: string }; Body: Static<typeof StateChangeBody> }>(`${AGENT_API}/hosts/:name/state-changes`, { schema: { ...hide, body: StateChangeBody } }, async (request, reply) => {
    await agentOf(request).reportStateChange(fromWire(request.body));
    return reply.status(204).send();
  });
  app.post<{ Params: { name: string }; Body: Static<typeof ExitBody> }>(`${AGENT_API}/hosts/:name/exits`, { schema: { ...hide, body: ExitBody } }, async (request, reply) => {
    agentOf(request).reportExit(exitFromWire(request.body));
    return reply.status(204).send();
  });
}
