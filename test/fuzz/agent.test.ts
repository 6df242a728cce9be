/**
 * Bad input over every route of a real `vtpm agent`, the service a host runs
 * for the control plane: the routes come from the route table of the app the
 * agent builds, the requests from each route's schemas, mutated. Sent
 * without a token, with garbage, with users' tokens (an admin's included:
 * only the host's agent token opens the agent) and with the agent token. No
 * answer may be a 5xx or stall, every error has the product's shape, a
 * user's token never gets past authentication, and the agent still answers
 * and reports to its control plane afterwards.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { METRICS_PATH } from '../../src/http/metrics-endpoint.js';
import { AgentUnderTest } from '../e2e/support/agent.js';
import { CANARY } from './support/hostile.js';
import { startFuzzService } from './support/fuzz-service.js';
import { apiCall } from './support/identities.js';
import {
  type Credential,
  DEADLINE_MS,
  describeRequest,
  type FuzzRequest,
  fault,
  fuzzRoute,
  send,
} from './support/requests.js';
import { agentOperations, type Operation } from './support/routes.js';
import { Counts, seededUuid } from './support/settings.js';

const RUNS_PER_ROUTE = 60;
const HOST = 'fuzz-agent-host';
/** Refusals of Node's HTTP parser, which come before any authentication can: malformed, too slow, too long. */
const BEFORE_AUTHENTICATION = new Set([400, 408, 431]);

const counts = new Counts();
const { workDir, service, identities } = await startFuzzService('agent', counts);
const agentDir = join(workDir, 'agent');
const agent = await AgentUnderTest.start(service, agentDir, HOST);
after(() => agent.stop());
const agentToken = (await readFile(join(agentDir, 'agent.token'), 'utf8')).trim();
const authorization = (credential: Credential) =>
  credential === 'agent' ? `Bearer ${agentToken}` : identities.authorization(credential);

// A vTPM running on the agent's host, so that fuzzed requests reach one that exists there.
const started = await apiCall(service.url, identities.admin.token, 'POST', `/v1/vtpms/${identities.target}/start`, {
  host: HOST,
});
assert.equal(started.status, 200, JSON.stringify(started.json));

const operations = await agentOperations();
const context = { refs: new Map(), known: [...identities.known, HOST, '1.2', '2.0', CANARY] };

async function exchange(request: FuzzRequest, route: string): Promise<void> {
  const answer = await send(agent.url, request, authorization(request.credential));
  counts.add('requests sent');
  counts.add(answer.status < 400 ? 'accepted' : 'refused');
  counts.add(`answered ${answer.status}`);
  const problem = fault(request, answer);
  assert.equal(problem, undefined, `${route}: ${problem}\n  request: ${describeRequest(request)}`);
  const guarded = route !== `GET ${METRICS_PATH}`;
  if (
    guarded &&
    request.credential !== 'agent' &&
    answer.contentType !== 'reset' &&
    !BEFORE_AUTHENTICATION.has(answer.status)
  )
    assert.equal(answer.status, 401, `${route}: a request without the agent token got past authentication`);
}

/** The agent answers its control plane, and promptly: no fuzzed request left it stalled or gone. */
async function answersPromptly(): Promise<void> {
  const begin = performance.now();
  const response = await fetch(`${agent.url}/agent/v1/describe`, {
    headers: { authorization: `Bearer ${agentToken}` },
    signal: AbortSignal.timeout(DEADLINE_MS),
  });
  assert.equal(response.status, 200);
  await response.arrayBuffer();
  assert.ok(performance.now() - begin < 1000, 'the agent was slow to answer after the fuzz');
}

const label = (operation: Operation) => `${operation.method} ${operation.path}`;

describe('bad input on every route of vtpm agent', () => {
  it('finds the agent routes', () => {
    assert.ok(operations.some((o) => o.method === 'POST' && o.path === '/agent/v1/vtpms/{vm}/start'));
    assert.ok(operations.some((o) => o.method === 'GET' && o.path === '/agent/v1/running'));
  });

  for (const operation of operations) {
    it(label(operation), async () => {
      await fuzzRoute(operation, context, RUNS_PER_ROUTE, (request) => exchange(request, label(operation)));
      counts.add('routes covered');
      await answersPromptly();
    });
  }

  it('still works for its control plane: a new vTPM starts on it and runs there', async () => {
    const admin = identities.admin.token;
    const vm = seededUuid('after the agent fuzz');
    const created = await apiCall(service.url, admin, 'POST', '/v1/vtpms', { vm, version: '2.0' });
    assert.equal(created.status, 201, JSON.stringify(created.json));
    const start = await apiCall(service.url, admin, 'POST', `/v1/vtpms/${vm}/start`, { host: HOST });
    assert.equal(start.status, 200, JSON.stringify(start.json));
    const shown = await apiCall(service.url, admin, 'GET', `/v1/vtpms/${vm}`);
    assert.deepEqual([shown.json.status, shown.json.host], ['running', HOST]);
    assert.ok(counts.get('requests sent') > 0);
  });
});
