/** The control plane's gauges that are read from the database when Prometheus scrapes, not kept up to date. */
import type { Store } from '../store/index.js';
import { TPM_VERSIONS } from '../tpm-spec/tpm-spec.js';
import type { ControlPlaneMetrics } from './service-metrics.js';

export async function readControlPlaneGauges(store: Store, metrics: ControlPlaneMetrics): Promise<void> {
  const counts = await store.vtpms.countByHostAndStatus();
  const ready = await Promise.all(TPM_VERSIONS.map((version) => store.pool.count(version)));
  const hosts = await store.hosts.list();
  // Reset first: a host whose last vTPM went, or a status nobody is in any more, must not keep its old count.
  metrics.vtpms.reset();
  for (const { host, status, count } of counts) metrics.vtpms.set({ host, status }, count);
  for (const [index, version] of TPM_VERSIONS.entries()) metrics.poolReady.set({ version }, ready[index] ?? 0);
  metrics.heartbeatAge.reset();
  const at = Date.now();
  // The control plane's own host has no agent to hear from: it is up while this process answers the scrape.
  for (const host of hosts.filter((h) => h.agent_url !== null)) {
    metrics.heartbeatAge.set({ host: host.name }, Math.max(0, (at - Date.parse(host.last_seen)) / 1000));
  }
}
