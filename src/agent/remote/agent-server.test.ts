/**
 * `vtpm agent` reports its vTPMs' state changes to the control plane and
 * tries each until it is taken. An answer that is not the control plane's
 * decision on the report, such as "who are you?" from a control plane that
 * could not read this host's token yet (its key manager away at start-up),
 * is tried again. A refusal of the report itself goes back to the state
 * watcher as one, so that the refused state is never named as a predecessor.
 */
import { AgentMetrics } from '../../metrics/service-metrics.js';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { after, describe, it } from 'node:test';
import pino from 'pino';
import { ApiClient, RemoteError } from '../../api/client.js';
import type { StateChange } from '../host-agent.js';
import type { LocalHostAgent } from '../local-host-agent.js';
import { buildAgentApi } from './agent-server.js';

/** A control plane that answers the reports it gets, in turn, with `statuses` (then 204). */
async function controlPlaneAnswering(statuses: number[]): Promise<{ server: Server; url: string; seen: string[] }> {
  const seen: string[] = [];
  const server = createServer((request: IncomingMessage, response) => {
    seen.push(request.url ?? '');
    const status = statuses.shift() ?? 204;
    const body =
      status === 204
        ? ''
        : JSON.stringify({
            error: { code: { 401: 'unauthenticated', 429: 'throttled' }[status] ?? 'conflict', message: 'no' },
          });
    request.resume();
    request.on('end', () => response.writeHead(status, { 'content-type': 'application/json' }).end(body));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return { server, url: `http://127.0.0.1:${port}`, seen };
}

/** Just what the agent's API registers with: its report listeners. */
function agentReporting(): { agent: LocalHostAgent; report: (change: StateChange) => Promise<void> } {
  let report: ((change: StateChange) => Promise<void>) | undefined;
  const agent = {
    hostName: 'host-b',
    onStateChange: (listener: (change: StateChange) => Promise<void>) => {
      report = listener;
    },
    onExit: () => undefined,
  } as unknown as LocalHostAgent;
  return { agent, report: (change) => report!(change) };
}

const servers: Server[] = [];
after(() => {
  for (const server of servers) server.close();
});

const change = (): StateChange => ({
  vm: randomUUID(),
  kind: 'tpm',
  data: Buffer.from('state'),
  final: false,
  instance: randomUUID(),
  after: [],
});

/** An agent whose control plane answers its reports with `statuses`, in turn. */
async function agentBehind(statuses: number[]) {
  const controlPlane = await controlPlaneAnswering(statuses);
  servers.push(controlPlane.server);
  const { agent, report } = agentReporting();
  const client = await ApiClient.withToken({ url: controlPlane.url, token: 'host-b-token' });
  await buildAgentApi({
    agent,
    token: 'host-b-token',
    controlPlane: client,
    logger: pino({ level: 'silent' }),
    metrics: new AgentMetrics(),
  });
  return { controlPlane, report };
}

describe('vtpm agent reporting a state change', () => {
  it('tries again when the control plane does not know its token yet, or throttles it, until it is taken', async () => {
    const { controlPlane, report } = await agentBehind([401, 429, 401]);

    await report(change());
    assert.equal(controlPlane.seen.length, 4, 'sent until the control plane took it');
  });

  it('passes a refusal on to the watcher, which never names a refused state as one the vault holds', async () => {
    const { controlPlane, report } = await agentBehind([409]);

    await assert.rejects(report(change()), (error: unknown) => error instanceof RemoteError && error.status === 409);
    assert.equal(controlPlane.seen.length, 1, 'not sent again');
  });
});
