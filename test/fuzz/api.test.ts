/**
 * Bad input over every route of a real `vtpm serve`: the routes come from
 * its own OpenAPI document (and, for those the document hides, from the
 * route table of the app it builds), the requests from each route's
 * schemas, mutated. Sent without a token, with garbage, with an admin's,
 * with a member's of another project and with a host agent's. No answer
 * may be a 5xx, every error has the product's shape, none may take longer
 * than a few seconds, the service answers afterwards, and nothing the
 * input names appears on disk.
 */
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { canaryPaths, listing } from './support/disk.js';
import { CANARY, hostileString } from './support/hostile.js';
import { startFuzzService } from './support/fuzz-service.js';
import { apiCall } from './support/identities.js';
import {
  DEADLINE_MS,
  describeRequest,
  type FuzzRequest,
  fault,
  fuzzRoute,
  requestsFor,
  send,
} from './support/requests.js';
import { everyOperation, type OpenApiDocument, type Operation, referencesOf } from './support/routes.js';
import type { SchemaContext } from './support/schema.js';
import { Counts, fuzz } from './support/settings.js';

const RUNS_PER_ROUTE = 60;

const counts = new Counts();
const { workDir, dataDir, service, identities } = await startFuzzService('api', counts);
const call = (token: string, method: string, path: string, body?: unknown) =>
  apiCall(service.url, token, method, path, body);
const document = (await (await fetch(`${service.url}/openapi.json`)).json()) as OpenApiDocument;
const { hosts } = (await call(identities.admin.token, 'GET', '/v1/hosts')).json as { hosts: Array<{ name: string }> };
const localHosts = hosts.map((h) => h.name);
const context: SchemaContext = {
  refs: referencesOf(document),
  known: [...identities.known, ...localHosts, '1.2', '2.0', CANARY],
};
// A delete takes away what later routes would aim at; deletes run last, whatever the routes are.
const operations = (await everyOperation(document)).sort(
  (a, b) => Number(a.method === 'DELETE') - Number(b.method === 'DELETE'),
);
const dataDirBefore = await listing(workDir, [dataDir]);

/** Sends one fuzzed request and fails the property on a 5xx, a stall or an error without the shape. */
async function exchange(request: FuzzRequest, route: string): Promise<void> {
  const answer = await send(service.url, request, identities.authorization(request.credential));
  counts.add('requests sent');
  counts.add(answer.status < 400 ? 'accepted' : 'refused');
  counts.add(`answered ${answer.status}`);
  const problem = fault(request, answer);
  assert.equal(problem, undefined, `${route}: ${problem}\n  request: ${describeRequest(request)}`);
  if (answer.status < 400 && request.method !== 'GET' && request.method !== 'HEAD') await identities.heal();
}

/** The service answers, and promptly: no fuzzed request left it stalled or gone. */
async function answersPromptly(): Promise<void> {
  const started = performance.now();
  const response = await fetch(`${service.url}/healthz`, { signal: AbortSignal.timeout(DEADLINE_MS) });
  assert.equal(response.status, 200);
  await response.arrayBuffer();
  assert.ok(performance.now() - started < 1000, 'the service was slow to answer after the fuzz');
}

const label = (operation: Operation) => `${operation.method} ${operation.path}${operation.hidden ? ' (hidden)' : ''}`;

describe('bad input on every route', () => {
  it('finds the documented routes and the hidden ones', () => {
    assert.ok(operations.some((o) => !o.hidden && o.path === '/v1/vtpms/{vm}' && o.method === 'DELETE'));
    assert.ok(operations.some((o) => o.hidden && o.path.startsWith('/agent/v1/')));
    assert.ok(operations.some((o) => o.hidden && o.path === '/healthz'));
  });

  for (const operation of operations) {
    it(label(operation), async () => {
      await fuzzRoute(operation, context, RUNS_PER_ROUTE, (request) => exchange(request, label(operation)));
      counts.add('routes covered');
      if (operation.hidden) counts.add('hidden routes covered');
      await answersPromptly();
    });
  }

  it('answers requests for routes that do not exist', async () => {
    const prefixes = [
      '/',
      '/v1/',
      '/v1/vtpms/',
      '/agent/v1/',
      `/agent/v1/hosts/${identities.agentHost}/`,
      '//',
      '/v1//',
    ];
    const unknown: Operation = { method: 'GET', path: '{p}{rest}', parameters: [], body: undefined, hidden: true };
    const requests = fc
      .tuple(
        fc.constantFrom(...prefixes),
        hostileString(context.known),
        requestsFor({ ...unknown, path: '' }, context),
        fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'),
      )
      .map(([prefix, rest, request, method]) => ({
        ...request,
        method,
        path: prefix + encodeURIComponent(rest.replace(/[\uD800-\uDFFF]/g, '')) + request.path,
      }));
    await fuzz(
      fc.asyncProperty(requests, (request) => exchange(request, 'unknown route')),
      { runs: RUNS_PER_ROUTE },
    );
    await answersPromptly();
  });

  it('wrote nothing outside its data directory, and nothing named after the input anywhere', async () => {
    assert.deepEqual(await listing(workDir, [dataDir]), dataDirBefore);
    assert.deepEqual(await canaryPaths([tmpdir(), workDir, process.cwd()]), []);
    assert.ok(counts.get('requests sent') > 0);
    counts.add('heals', identities.heals);
  });
});
