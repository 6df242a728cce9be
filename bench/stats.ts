/** Distribution summaries for the benchmarks. */
export interface Summary {
  count: number;
  p50: number;
  /**
   * Only from 100 samples on: below that, the 99th percentile by nearest rank is the maximum itself, and a
   * table that called it p99 would claim a tail it never measured.
   */
  p99: number | undefined;
  max: number;
}

/** Fewest samples for which a 99th percentile is not simply the largest one. */
const P99_SAMPLES = 100;

/** The nearest-rank percentile: the smallest sample that at least `q` of the samples do not exceed. */
function nearestRank(sorted: number[], q: number): number {
  return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)] ?? Number.NaN;
}

export function summarize(samples: number[]): Summary {
  const sorted = [...samples].sort((a, b) => a - b);
  return {
    count: sorted.length,
    p50: nearestRank(sorted, 0.5),
    p99: sorted.length >= P99_SAMPLES ? nearestRank(sorted, 0.99) : undefined,
    max: sorted.at(-1) ?? Number.NaN,
  };
}

/** A table's p99 cell: the p99 where there are enough samples, otherwise the maximum, named as such. */
export function p99OrMax(summary: Summary, digits = 1): string {
  return summary.p99 !== undefined
    ? summary.p99.toFixed(digits)
    : `max ${summary.max.toFixed(digits)} (n=${summary.count})`;
}

export function table(rows: Array<Record<string, string | number>>): string {
  const columns = Object.keys(rows[0] ?? {});
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c]).length)));
  const line = (cells: string[]) => cells.map((cell, i) => cell.padStart(widths[i]!)).join('  ');
  return [line(columns), ...rows.map((r) => line(columns.map((c) => String(r[c]))))].join('\n');
}
