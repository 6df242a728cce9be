/**
 * What `vtpm serve` and `vtpm agent` tell Prometheus. Each process has one
 * registry of its own (not prom-client's global one), so that several
 * servers in one test process never share counters. Metric names carry the
 * `vtpm_` prefix and base units (seconds), as Prometheus' naming guide asks.
 *
 * Labels are bounded: host names, statuses, operations, routes as declared
 * (never a request's raw URL, never a VM id), so a fleet of 10,000 vTPMs
 * makes no more series than a fleet of ten.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { NoValidHostError } from '../errors.js';

/** Fractions of a second where API requests, key-manager calls and sync lags fall on a healthy host. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class ServiceMetrics {
  readonly registry = new Registry();

  readonly httpRequestDuration = new Histogram({
    name: 'vtpm_http_request_duration_seconds',
    help: 'HTTP requests answered, by method, route (as declared) and status code',
    labelNames: ['method', 'route', 'status'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  /** From a state file's change on the host to the control plane having it in the vault. */
  readonly syncLag = new Histogram({
    name: 'vtpm_sync_lag_seconds',
    help: "Time from a vTPM state file's change on the host to its report being taken into the vault",
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  /** `processMetrics`: the process's own (CPU, memory, event-loop lag, GC), for a server; tests leave them out. */
  constructor(options: { processMetrics?: boolean } = {}) {
    if (options.processMetrics) collectDefaultMetrics({ register: this.registry });
  }
}

/** The control plane's own metrics, beside those every server has. */
export class ControlPlaneMetrics extends ServiceMetrics {
  readonly vtpms = new Gauge({
    name: 'vtpm_vtpms',
    help: 'vTPMs by status and host (read from the database at each scrape)',
    labelNames: ['status', 'host'] as const,
    registers: [this.registry],
  });

  readonly poolReady = new Gauge({
    name: 'vtpm_pool_ready',
    help: 'TPMs manufactured ahead of demand and not yet claimed, by TPM version',
    labelNames: ['version'] as const,
    registers: [this.registry],
  });

  readonly vaultCommits = new Counter({
    name: 'vtpm_vault_commits_total',
    help: 'State generations committed to the vault, by reason (sync, stop, create, import, restore, ...)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  readonly stateReportRefusals = new Counter({
    name: 'vtpm_state_report_refusals_total',
    help: "Hosts' state reports refused: stale (they follow nothing the vault holds) or not from the serving host",
    labelNames: ['host'] as const,
    registers: [this.registry],
  });

  readonly keyManagerDuration = new Histogram({
    name: 'vtpm_key_manager_duration_seconds',
    help: 'Key-manager calls, by operation and result (ok or error)',
    labelNames: ['operation', 'result'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  readonly keyManagerErrors = new Counter({
    name: 'vtpm_key_manager_errors_total',
    help: 'Key-manager calls that failed, by operation',
    labelNames: ['operation'] as const,
    registers: [this.registry],
  });

  readonly heartbeatAge = new Gauge({
    name: 'vtpm_host_heartbeat_age_seconds',
    help: "Time since each remote host's agent was last heard of (a heartbeat every 5 s; down after --host-down-after)",
    labelNames: ['host'] as const,
    registers: [this.registry],
  });

  readonly schedulerRejections = new Counter({
    name: 'vtpm_scheduler_rejections_total',
    help: 'Hosts ruled out by placements that found no valid host, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  /** For the vault: counts a generation written. */
  readonly generationCommitted = (reason: string): void => this.vaultCommits.inc({ reason });

  /** For the fleet: counts why each host was ruled out of a placement that found none. */
  readonly placementRefused = (refusal: NoValidHostError): void => {
    for (const reason of refusal.reasons) this.schedulerRejections.inc({ reason });
  };
}

/** A host agent's (`vtpm agent`'s) own metrics, beside those every server has. */
export class AgentMetrics extends ServiceMetrics {
  readonly swtpmsRunning = new Gauge({
    name: 'vtpm_swtpms_running',
    help: 'swtpm processes this agent runs (read at each scrape)',
    registers: [this.registry],
  });
}
