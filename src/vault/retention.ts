/**
 * Which generations of a vTPM's state the vault keeps: the newest `newest`,
 * and beyond those the last of each day (UTC) for `days` days. A boot makes
 * several generations, so a count alone covers a few boots; the daily ones
 * let an operator go back to "how it was on Monday" after a bad update of the
 * guest, as a backup schedule would.
 */
export interface RetentionPolicy {
  newest: number;
  days: number;
}

export interface Dated {
  generation: number;
  created_at: string;
}

/** About five boots' worth, and two weeks of days. */
export const DEFAULT_RETENTION: RetentionPolicy = { newest: 20, days: 14 };

const DAY_MS = 86_400_000;

/** The generations to delete, of one vTPM and kind. */
export function generationsToPrune(generations: readonly Dated[], policy: RetentionPolicy, now: Date): number[] {
  const newestFirst = [...generations].sort((a, b) => b.generation - a.generation);
  const oldestDay = Math.floor(now.getTime() / DAY_MS) - policy.days + 1;
  const daysKept = new Set<number>();
  const prune: number[] = [];
  for (const [position, dated] of newestFirst.entries()) {
    if (position < policy.newest) continue;
    const day = Math.floor(Date.parse(dated.created_at) / DAY_MS);
    // The first seen of a day, newest first, is that day's last.
    if (day >= oldestDay && !daysKept.has(day)) daysKept.add(day);
    else prune.push(dated.generation);
  }
  return prune;
}
