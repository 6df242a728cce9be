/**
 * `/metrics` (Prometheus' text format) and the request-duration histogram,
 * for every server of the product. Like Patroni's and etcd's, the endpoint
 * needs no token: it carries counts and durations by host, status, route
 * and operation, never a VM id, a project or a secret. Scrapes that arrive
 * together share one collection, and a collection is reused for a second,
 * so no rate of scrapes makes the database work harder than once a second.
 */
import type { FastifyInstance } from 'fastify';
import type { ServiceMetrics } from '../metrics/service-metrics.js';

const REUSE_MS = 1_000;
/** The one route of every server that answers without a token. */
export const METRICS_PATH = '/metrics';

export function serveMetrics(app: FastifyInstance, metrics: ServiceMetrics, refresh?: () => Promise<void>): void {
  // A callback, not an async hook: no promise per request.
  app.addHook('onResponse', (request, reply, done) => {
    metrics.httpRequestDuration.observe(
      { method: request.method, route: request.routeOptions.url ?? 'unmatched', status: reply.statusCode },
      reply.elapsedTime / 1000,
    );
    done();
  });

  let collected: { at: number; text: Promise<string> } | undefined;
  const collect = async () => {
    await refresh?.();
    return metrics.registry.metrics();
  };
  app.get(METRICS_PATH, { schema: { hide: true } }, async (_request, reply) => {
    const now = Date.now();
    if (!collected || now - collected.at > REUSE_MS) {
      const text = collect();
      collected = { at: now, text };
      // A failed collection is not reused: the next scrape tries again.
      text.catch(() => {
        if (collected?.text === text) collected = undefined;
      });
    }
    reply.type(metrics.registry.contentType);
    return collected.text;
  });
}
