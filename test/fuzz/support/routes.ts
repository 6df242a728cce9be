/**
 * Every route the control plane serves, with what it takes: the ones the
 * served OpenAPI document describes, and the ones it hides (the agents'
 * reports, /healthz, the document itself), read from the route table of the
 * very app `vtpm serve` builds. A route added to the product is fuzzed
 * without a change here.
 */
import { AgentMetrics } from '../../../src/metrics/service-metrics.js';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import type { FastifyInstance, RouteOptions } from 'fastify';
import pino from 'pino';
import type { LocalHostAgent } from '../../../src/agent/local-host-agent.js';
import { buildAgentApi } from '../../../src/agent/remote/agent-server.js';
import type { ApiClient } from '../../../src/api/client.js';
import { buildHttpApi } from '../../../src/http/app.js';
import { openTestControlPlane } from '../../../src/orchestration/testing/control-plane-harness.js';
import type { JsonSchema } from './schema.js';

interface Parameter {
  name: string;
  in: 'path' | 'query';
  required: boolean;
  schema: JsonSchema;
}

export interface Operation {
  method: string;
  /** With `{name}` for each path parameter. */
  path: string;
  parameters: Parameter[];
  /** The JSON body's schema; undefined when the route declares none (it may still read one). */
  body: JsonSchema | undefined;
  /** Whether the OpenAPI document leaves the route out. */
  hidden: boolean;
}

interface OpenApiOperation {
  parameters?: Array<{ name: string; in: string; required?: boolean; schema?: JsonSchema }>;
  requestBody?: { content?: Record<string, { schema?: JsonSchema }> };
}

export interface OpenApiDocument {
  paths: Record<string, Record<string, OpenApiOperation>>;
  components?: { schemas?: Record<string, JsonSchema> };
}

const METHODS = new Set(['get', 'put', 'post', 'delete', 'patch', 'head', 'options']);

/** What a `$ref` of the document may point at: its components, by path and by `$id`. */
export function referencesOf(document: OpenApiDocument): Map<string, JsonSchema> {
  const refs = new Map<string, JsonSchema>();
  for (const [name, schema] of Object.entries(document.components?.schemas ?? {})) {
    refs.set(`#/components/schemas/${name}`, schema);
    if (schema.$id) refs.set(schema.$id, schema);
  }
  return refs;
}

function documentedOperations(document: OpenApiDocument): Operation[] {
  const operations: Operation[] = [];
  for (const [path, methods] of Object.entries(document.paths)) {
    for (const [method, operation] of Object.entries(methods)) {
      if (!METHODS.has(method)) continue;
      operations.push({
        method: method.toUpperCase(),
        path,
        parameters: (operation.parameters ?? [])
          .filter((p) => p.in === 'path' || p.in === 'query')
          .map((p) => ({
            name: p.name,
            in: p.in as 'path' | 'query',
            required: p.required === true,
            schema: p.schema ?? {},
          })),
        body: operation.requestBody?.content?.['application/json']?.schema,
        hidden: false,
      });
    }
  }
  return operations;
}

/** The parameters of one part of a route's schema (params or querystring), as the document would state them. */
function parametersOf(schema: unknown, where: 'path' | 'query', names: string[]): Parameter[] {
  const object = (schema ?? {}) as JsonSchema;
  const properties = object.properties ?? {};
  const listed = Object.entries(properties).map(([name, property]) => ({
    name,
    in: where,
    required: where === 'path' || (object.required ?? []).includes(name),
    schema: property,
  }));
  const missing = names.filter((name) => !(name in properties));
  return [...listed, ...missing.map((name) => ({ name, in: where, required: true, schema: { type: 'string' } }))];
}

function operationOf(route: RouteOptions): Operation[] {
  const methods = Array.isArray(route.method) ? route.method : [route.method];
  const names = [...route.url.matchAll(/:([A-Za-z0-9_]+)/g)].map((m) => m[1]!);
  const path = route.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
  const schema = (route.schema ?? {}) as { params?: unknown; querystring?: unknown; body?: JsonSchema };
  return methods.map((method) => ({
    method: method.toUpperCase(),
    path,
    parameters: [...parametersOf(schema.params, 'path', names), ...parametersOf(schema.querystring, 'query', [])],
    body: schema.body,
    hidden: true,
  }));
}

/**
 * Every route of the app `build` makes, read as fastify registers them:
 * fastify announces each instance it creates, so its onRoute hook is in
 * place before the first route.
 */
async function routeTable(build: () => Promise<FastifyInstance>): Promise<RouteOptions[]> {
  const routes: RouteOptions[] = [];
  const onInstance = (message: unknown) => {
    (message as { fastify: FastifyInstance }).fastify.addHook('onRoute', (route) => {
      routes.push(route);
    });
  };
  subscribe('fastify.initialization', onInstance);
  try {
    const app = await build();
    await app.ready();
    await app.close();
  } finally {
    unsubscribe('fastify.initialization', onInstance);
  }
  return routes;
}

/** The routes of `vtpm serve`'s app, over a test control plane: they do not depend on what is behind them. */
async function controlPlaneRoutes(): Promise<RouteOptions[]> {
  const harness = await openTestControlPlane();
  try {
    return await routeTable(() => buildHttpApi({ cp: harness.cp, logger: pino({ level: 'silent' }), version: 'fuzz' }));
  } finally {
    await harness.close();
  }
}

/** Every route of `vtpm agent`'s app; the agent behind it is never called while the routes are read. */
export async function agentOperations(): Promise<Operation[]> {
  const agent = { hostName: 'fuzz', onStateChange: () => undefined, onExit: () => undefined };
  const routes = await routeTable(() =>
    buildAgentApi({
      agent: agent as unknown as LocalHostAgent,
      token: 'fuzz',
      controlPlane: {} as ApiClient,
      logger: pino({ level: 'silent' }),
      metrics: new AgentMetrics(),
    }),
  );
  return routes.flatMap(operationOf).filter((operation) => operation.method !== 'HEAD');
}

const keyOf = (operation: { method: string; path: string }) => `${operation.method} ${operation.path}`;

/** The documented operations, and every route of the app the document leaves out. */
export async function everyOperation(document: OpenApiDocument): Promise<Operation[]> {
  const documented = documentedOperations(document);
  const known = new Set(documented.map(keyOf));
  const hidden = new Map<string, Operation>();
  for (const route of await controlPlaneRoutes()) {
    for (const operation of operationOf(route)) {
      // fastify adds a HEAD route beside each GET; it is fuzzed as the GET's HEAD, not as a route of its own.
      if (operation.method === 'HEAD' || known.has(keyOf(operation))) continue;
      hidden.set(keyOf(operation), operation);
    }
  }
  return [...documented, ...hidden.values()];
}
