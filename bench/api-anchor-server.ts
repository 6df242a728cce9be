/**
 * The anchors of the `api` benchmark (control-plane.ts), each a process of
 * its own as `vtpm serve` is. `bare`: Node's HTTP server answering the
 * service's very bytes from memory, the ceiling of any Node HTTP service
 * here. `fastify`: a bare fastify app (its defaults) whose routes have the
 * service's response schemas and serialise the same objects, what the
 * service's framework costs without authentication, store or audit.
 *
 * `node api-anchor-server.js bare|fastify`, the routes as JSON in
 * ANCHOR_ROUTES; prints `port N` once it listens.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Type } from '@sinclair/typebox';
import Fastify from 'fastify';
import { Vtpm, VtpmList } from '../src/api/vtpms.js';

export interface AnchorRoute {
  /** The route as the service registers it, e.g. /v1/vtpms/:vm. */
  route: string;
  /** The path the load generator asks for. */
  path: string;
  schema: 'Vtpm' | 'VtpmList';
  /** What the service answered on `path`. */
  body: unknown;
}

const CONTENT_TYPE = 'application/json; charset=utf-8';

async function listenBare(routes: AnchorRoute[]): Promise<number> {
  const answers = new Map(routes.map((r) => [r.path, Buffer.from(JSON.stringify(r.body))]));
  const server = createServer((request, response) => {
    const body = answers.get(request.url ?? '');
    if (!body) return void response.writeHead(404).end();
    response.writeHead(200, { 'content-type': CONTENT_TYPE, 'content-length': body.length }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

async function listenFastify(routes: AnchorRoute[]): Promise<number> {
  const app = Fastify();
  app.addSchema(Vtpm);
  for (const { route, schema, body } of routes) {
    const response = { 200: schema === 'Vtpm' ? Type.Ref(Vtpm) : VtpmList };
    app.get(route, { schema: { response } }, async () => body);
  }
  await app.listen({ host: '127.0.0.1', port: 0 });
  return (app.server.address() as AddressInfo).port;
}

const routes = JSON.parse(process.env.ANCHOR_ROUTES ?? '[]') as AnchorRoute[];
const kind = process.argv[2];
if (kind !== 'bare' && kind !== 'fastify') throw new Error(`api-anchor-server: bare or fastify, not ${kind}`);
const port = await (kind === 'bare' ? listenBare(routes) : listenFastify(routes));
process.stdout.write(`port ${port}\n`);
