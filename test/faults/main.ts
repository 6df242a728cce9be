/**
 * `npm run test:faults`: randomised fault scenarios over real swtpm
 * processes under continuous state changes (see scenario.ts for what is
 * injected and checked). Bounded to a few minutes by default; `--soak` (or
 * VTPM_FAULTS_SOAK=1) runs for hours, `--duration SECONDS` sets the budget,
 * `--seed N` (or VTPM_FAULTS_SEED) replays a run's choices, `--only KIND,...`
 * restricts the faults. Exits non-zero
 * when any invariant was violated.
 */
import { emptyFigures, FAULT_KINDS, type FaultKind, Scenario } from './scenario.js';
import { Prng } from './prng.js';

const BOUNDED_BUDGET_MS = 150_000;
const SOAK_BUDGET_MS = 4 * 3600_000;
/** A scenario's set-up, fault phase and checks take about this much beyond its fault phase. */
const SCENARIO_OVERHEAD_MS = 25_000;

function options(argv: string[]): { soak: boolean; seed: number; budgetMs: number; kinds: FaultKind[] } {
  const value = (name: string) => {
    const at = argv.indexOf(name);
    return at >= 0 ? argv[at + 1] : undefined;
  };
  const soak = argv.includes('--soak') || process.env.VTPM_FAULTS_SOAK === '1';
  const seedText = value('--seed') ?? process.env.VTPM_FAULTS_SEED;
  const seed = seedText === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(seedText);
  if (!Number.isInteger(seed)) throw new Error(`--seed: an integer, not ${seedText}`);
  const duration = value('--duration');
  const budgetMs = duration === undefined ? (soak ? SOAK_BUDGET_MS : BOUNDED_BUDGET_MS) : Number(duration) * 1000;
  if (!(budgetMs > 0)) throw new Error(`--duration: seconds, not ${duration}`);
  const only = value('--only')?.split(',') ?? [...FAULT_KINDS];
  const unknown = only.filter((k) => !(FAULT_KINDS as readonly string[]).includes(k));
  if (unknown.length > 0) throw new Error(`--only: fault kinds among ${FAULT_KINDS.join(', ')}, not ${unknown}`);
  return { soak, seed, budgetMs, kinds: only as FaultKind[] };
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function main(): Promise<number> {
  const { soak, seed, budgetMs, kinds } = options(process.argv.slice(2));
  const log = (line: string) => process.stdout.write(`${line}\n`);
  log(`faults: seed ${seed} (replay with --seed ${seed})${soak ? ', soak' : ''}, budget ${budgetMs / 1000} s`);
  log(
    'definitions: a write is acknowledged when the TPM answered it (what the guest was told); it is safe once ' +
      'a vault generation holding it is committed (in vtpm history; known by the state digest after the ' +
      'write). Lost: a start read an older value than the promise covers (kill -9 of serve, restart, stop, ' +
      "guest exit: the last answered write; kill -9 of swtpm: the vault's last committed one). Recovery " +
      'point of a swtpm kill: the time from the answer the start read back to the last answer before the kill.',
  );
  const prng = new Prng(seed);
  const figures = emptyFigures();
  const started = Date.now();
  let passed = 0;
  const failed: Array<{ name: string; violations: string[] }> = [];
  for (let index = 1; ; index += 1) {
    const remaining = budgetMs - (Date.now() - started);
    const faultPhaseMs = Math.min(prng.int(15_000, 30_000), remaining - SCENARIO_OVERHEAD_MS);
    if (faultPhaseMs < 8_000 && index > 1) break;
    const name = `scenario ${index}`;
    log(`${name}: fault phase ${Math.round(Math.max(faultPhaseMs, 8_000) / 1000)} s`);
    const scenario = new Scenario(name, prng, figures, log, kinds);
    await scenario.run(Math.max(faultPhaseMs, 8_000));
    if (scenario.violations.length === 0) passed += 1;
    else failed.push({ name, violations: scenario.violations });
    log(`${name}: ${scenario.violations.length === 0 ? 'passed' : `FAILED (${scenario.violations.length})`}`);
  }
  const recovery = [...figures.recoveryPointsMs].sort((a, b) => a - b);
  log('');
  log(`seed ${seed}; ${passed + failed.length} scenarios in ${Math.round((Date.now() - started) / 1000)} s`);
  log(`faults injected: ${FAULT_KINDS.map((k) => `${k} ${figures.faults[k]}`).join(', ')}`);
  log(
    `writes acknowledged ${figures.writesAcknowledged}, checked ${figures.writesChecked}, ` +
      `lost ${figures.writesLost}; vault generations verified to decrypt ${figures.generationsVerified}`,
  );
  log(
    `recovery point at swtpm kills (${recovery.length}): p50 ${percentile(recovery, 50)} ms, ` +
      `p99 ${percentile(recovery, 99)} ms, max ${recovery.at(-1) ?? 0} ms`,
  );
  for (const note of figures.notes) log(`note: ${note}`);
  for (const { name, violations } of failed) for (const v of violations) log(`${name} (seed ${seed}): ${v}`);
  log(`faults: ${passed} passed, ${failed.length} failed`);
  return failed.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
    process.exit(2);
  },
);
