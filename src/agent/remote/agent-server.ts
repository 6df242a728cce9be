/**
 * `vtpm agent`: a host's agent as a service of its own, for hosts other than
 * the control plane's. It serves the HostAgent calls to the control plane
 * (bearer: the host's agent token, which `vtpm host add` issued), and reports
 * its state changes and swtpm exits back, in order, retrying until the
 * control plane has taken each one: the host's working copy holds the state
 * meanwhile, so nothing acknowledged is lost while the control plane is away.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Static } from '@sinclair/typebox';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { RemoteError, type ApiClient } from '../../api/client.js';
import { bearerToken } from '../../api/patterns.js';
import { UnauthenticatedError } from '../../errors.js';
import { useProductErrors } from '../../http/error-handler.js';
import { METRICS_PATH, serveMetrics } from '../../http/metrics-endpoint.js';
import { answerWithRequestId } from '../../http/request-id.js';
import { productServerOptions } from '../../http/server-options.js';
import type { AgentMetrics } from '../../metrics/service-metrics.js';
import { withWiped } from '../../keys/wiped.js';
import type { LocalHostAgent } from '../local-host-agent.js';
import { AGENT_API, HEARTBEAT_INTERVAL_MS, reportPath, StartBody, toWire, WorkingStateBody } from './wire.js';

export interface AgentServerOptions {
  agent: LocalHostAgent;
  /** The host's agent token: the control plane presents it, and the agent reports with it. */
  token: string;
  controlPlane: ApiClient;
  logger: Logger;
  https?: { cert: Buffer; key: Buffer } | undefined;
  metrics: AgentMetrics;
}

const RETRY_MAX_MS = 5_000;
const digest = (token: string) => createHash('sha256').update(token).digest();
/**
 * 4xx answers that are no decision on the report: the control plane does not know this host's token yet (its
 * key manager was away when it started), timed out, or throttles.
 */
const NOT_DECIDED = new Set([401, 408, 429]);

/**
 * Sends one report until the control plane takes it, or refuses it (a 4xx that decides on it), which is
 * thrown: a refused state change must not count as taken (its watcher then names it as a predecessor).
 */
/** Sends a report whose refusal the control plane decided: logged and dropped. */
async function deliverOrDrop(controlPlane: ApiClient, logger: Logger, path: string, body: unknown): Promise<void> {
  await deliver(controlPlane, logger, path, body).catch((error: RemoteError) =>
    logger.warn({ path, code: error.code, reason: error.message }, 'the control plane refused a report'),
  );
}

async function deliver(controlPlane: ApiClient, logger: Logger, path: string, body: unknown): Promise<void> {
  for (let wait = 100; ; wait = Math.min(wait * 2, RETRY_MAX_MS)) {
    try {
      await controlPlane.request('POST', path, body);
      return;
    } catch (error) {
      if (error instanceof RemoteError && error.status < 500 && !NOT_DECIDED.has(error.status)) throw error;
      logger.warn({ path, err: error, retryInMs: wait }, 'the control plane did not take a report; retrying');
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
}

export async function buildAgentApi(options: AgentServerOptions): Promise<FastifyInstance> {
  const { agent, logger, controlPlane } = options;
  const expected = digest(options.token);
  const app = Fastify({
    ...productServerOptions(logger, 16 * 1024 * 1024),
    ...(options.https && { https: options.https }),
  }) as unknown as FastifyInstance;

  answerWithRequestId(app);
  app.addHook('onRequest', async (request) => {
    // Prometheus scrapes without the agent token, which would let it run vTPMs (see http/metrics-endpoint.ts).
    if (request.routeOptions.url === METRICS_PATH) return;
    const token = bearerToken(request.headers.authorization);
    if (!token || !timingSafeEqual(digest(token), expected)) {
      throw new UnauthenticatedError(
        'missing or wrong agent token: the control plane presents the token `vtpm host add` issued for this host',
      );
    }
  });
  useProductErrors(app);
  serveMetrics(app, options.metrics, async () => {
    options.metrics.swtpmsRunning.set((await agent.running()).length);
  });

  const vmParams = {
    type: 'object',
    properties: { vm: { type: 'string', format: 'uuid' } },
    required: ['vm'],
  } as const;
  app.get(`${AGENT_API}/describe`, async () => agent.describe());
  app.get(`${AGENT_API}/running`, async () => ({ running: await agent.running() }));
  app.get<{ Params: { vm: string } }>(
    `${AGENT_API}/vtpms/:vm/connected`,
    { schema: { params: vmParams } },
    async (request) => ({
      connected: await agent.guestConnected(request.params.vm),
    }),
  );
  app.post<{ Params: { vm: string }; Body: Static<typeof StartBody> }>(
    `${AGENT_API}/vtpms/:vm/start`,
    { schema: { params: vmParams, body: StartBody } },
    async (request) => {
      const { instance, spec, firmware, state_key: stateKey, state, nvram } = request.body;
      const nvramState = nvram === undefined ? undefined : Buffer.from(nvram, 'base64');
      return withWiped(Buffer.from(stateKey, 'base64'), (key) =>
        agent.start({
          vm: request.params.vm,
          instance,
          spec,
          firmware,
          stateKey: key,
          state: Buffer.from(state, 'base64'),
          nvram: nvramState,
        }),
      );
    },
  );
  app.post<{ Params: { vm: string } }>(
    `${AGENT_API}/vtpms/:vm/stop`,
    { schema: { params: vmParams } },
    async (request, reply) => {
      await agent.stop(request.params.vm);
      return reply.status(204).send();
    },
  );
  app.delete<{ Params: { vm: string } }>(
    `${AGENT_API}/vtpms/:vm`,
    { schema: { params: vmParams } },
    async (request, reply) => {
      await agent.destroy(request.params.vm);
      return reply.status(204).send();
    },
  );
  app.post<{ Params: { vm: string } }>(
    `${AGENT_API}/vtpms/:vm/resync`,
    { schema: { params: vmParams } },
    async (request, reply) => {
      await agent.resync(request.params.vm);
      return reply.status(204).send();
    },
  );
  app.post<{ Params: { vm: string }; Body: Static<typeof WorkingStateBody> }>(
    `${AGENT_API}/vtpms/:vm/working-state`,
    { schema: { params: vmParams, body: WorkingStateBody } },
    async (request) => {
      const state = await agent.workingState(request.params.vm, request.body.spec);
      return Object.fromEntries(Object.entries(state).map(([kind, data]) => [kind, data.toString('base64')]));
    },
  );

  agent.onStateChange((change) =>
    deliver(controlPlane, logger, reportPath(agent.hostName, 'state-changes'), toWire(change)),
  );
  agent.onExit((exit) => void deliverOrDrop(controlPlane, logger, reportPath(agent.hostName, 'exits'), exit));
  return app;
}

/**
 * Tells the control plane this agent is up, and what it is (traits,
 * capabilities, where its sockets are); retried until taken.
 */
export async function reportIn(controlPlane: ApiClient, agent: LocalHostAgent, logger: Logger): Promise<void> {
  await deliverOrDrop(controlPlane, logger, reportPath(agent.hostName, 'hello'), await agent.describe());
}

/**
 * Tells the control plane every few seconds that this agent is alive, until
 * stopped (the returned function). A heartbeat that does not arrive is not
 * sent again: the next one is as good.
 */
export function sendHeartbeats(controlPlane: ApiClient, hostName: string, logger: Logger): () => void {
  const beat = () =>
    void controlPlane
      .request('POST', reportPath(hostName, 'heartbeat'))
      .catch((error: unknown) => logger.debug({ err: error }, 'a heartbeat did not reach the control plane'));
  const timer = setInterval(beat, HEARTBEAT_INTERVAL_MS);
  return () => clearInterval(timer);
}
