/** What a fault run injects, and the figures it counts and prints. */
import type { ProxyCounts } from './proxy.js';

export const FAULT_KINDS = [
  'kill-serve',
  'kill-swtpm',
  'kill-agent',
  'kill-qemu',
  'keys-away',
  'keys-away-restart',
  'second-serve',
  'second-agent',
  'proxy-delay',
  'proxy-drop',
  'proxy-duplicate',
  'proxy-replay',
  'fs-full',
  'db-locked',
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/** The kills whose recovery point is measured. */
const KILL_KINDS = ['kill-serve', 'kill-agent', 'kill-swtpm', 'kill-qemu'] as const;
export type KillKind = (typeof KILL_KINDS)[number];

/** How often each fault is drawn once every kind has had its turn. */
export const FAULT_WEIGHTS: Record<FaultKind, number> = {
  'kill-serve': 3,
  'kill-swtpm': 4,
  'kill-agent': 3,
  'kill-qemu': 1,
  'keys-away': 1,
  'keys-away-restart': 1,
  'second-serve': 1,
  'second-agent': 1,
  'proxy-delay': 2,
  'proxy-drop': 2,
  'proxy-duplicate': 2,
  'proxy-replay': 2,
  'fs-full': 1,
  'db-locked': 1,
};

export interface Figures {
  faults: Record<FaultKind, number>;
  writesAcknowledged: number;
  writesChecked: number;
  writesLost: number;
  generationsVerified: number;
  /** Per kill kind, for each vTPM a kill concerned: how far the vault was behind what its guest was told. */
  recoveryPointsMs: Record<KillKind, number[]>;
  proxy: ProxyCounts;
  notes: string[];
}

export function emptyFigures(): Figures {
  return {
    faults: Object.fromEntries(FAULT_KINDS.map((k) => [k, 0])) as Record<FaultKind, number>,
    writesAcknowledged: 0,
    writesChecked: 0,
    writesLost: 0,
    generationsVerified: 0,
    recoveryPointsMs: Object.fromEntries(KILL_KINDS.map((k) => [k, []])) as unknown as Record<KillKind, number[]>,
    proxy: { forwarded: 0, delayed: 0, dropped: 0, duplicated: 0, replayed: 0, replaysTaken: 0 },
    notes: [],
  };
}

export function addProxyCounts(figures: Figures, counts: ProxyCounts): void {
  for (const key of Object.keys(counts) as Array<keyof ProxyCounts>) figures.proxy[key] += counts[key];
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** One line per kill kind: `kind (n): p50 .. ms, p99 .. ms, max .. ms`. */
export function recoveryLines(figures: Figures): string[] {
  return KILL_KINDS.map((kind) => {
    const sorted = [...figures.recoveryPointsMs[kind]].sort((a, b) => a - b);
    return (
      `  ${kind} (${sorted.length}): p50 ${percentile(sorted, 50)} ms, p99 ${percentile(sorted, 99)} ms, ` +
      `max ${sorted.at(-1) ?? 0} ms`
    );
  });
}
