/**
 * How much a fuzz run does and how to replay it. Every property of the fuzz
 * suite runs from one seed, printed at the start, so a failure seen in CI
 * replays with VTPM_FUZZ_SEED=N. CI runs each property a bounded number of
 * times; VTPM_FUZZ_RUNS=N runs every property N times instead.
 */
import { createHash } from 'node:crypto';
import fc from 'fast-check';

function integerFromEnv(name: string): number | undefined {
  const text = process.env[name];
  if (text === undefined || text === '') return undefined;
  const value = Number(text);
  if (!Number.isSafeInteger(value)) throw new Error(`${name} must be an integer, got ${JSON.stringify(text)}`);
  return value;
}

const seed = integerFromEnv('VTPM_FUZZ_SEED') ?? Math.floor(Math.random() * 2 ** 31);
const runsOverride = integerFromEnv('VTPM_FUZZ_RUNS');
process.stderr.write(
  `fuzz: seed ${seed} (replay with VTPM_FUZZ_SEED=${seed}); runs per property: ${runsOverride ?? 'default'}\n`,
);

export const FUZZ_SEED = seed;

/** The runs of a property: its bounded default, or VTPM_FUZZ_RUNS. */
const runsOf = (bounded: number): number => runsOverride ?? bounded;

/**
 * Runs a property from the suite's seed. `shrink: false` where one run costs
 * process spawns: the first counterexample is reported as it was found.
 */
export async function fuzz<T>(
  property: fc.IAsyncPropertyWithHooks<T> | fc.IAsyncProperty<T>,
  options: { runs: number; shrink?: boolean },
): Promise<void> {
  await fc.assert(property, {
    seed,
    numRuns: runsOf(options.runs),
    endOnFailure: options.shrink === false,
    includeErrorInReport: true,
  });
}

/** What a fuzz file did, printed when it ends: the counts the suite reports. */
export class Counts {
  private readonly values = new Map<string, number>();

  add(name: string, by = 1): void {
    this.values.set(name, (this.values.get(name) ?? 0) + by);
  }

  get(name: string): number {
    return this.values.get(name) ?? 0;
  }

  report(what: string): string {
    const shown = [...this.values].map(([name, value]) => `${name} ${value}`).join(', ');
    return `fuzz ${what}: ${shown} (seed ${seed})`;
  }
}

/** A UUID that follows from the seed and `label`: what a run aims at is the same when it is replayed. */
export function seededUuid(label: string): string {
  const hex = createHash('sha256').update(`${seed}/${label}`).digest('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}
