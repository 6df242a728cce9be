/**
 * `npm run test:faults`: randomised fault scenarios over real swtpm
 * processes and a real QEMU guest under continuous state changes, on two
 * hosts (see scenario.ts for what is injected and checked). Bounded to a few
 * minutes by default, and every fault kind is injected at least once;
 * `--soak` (or VTPM_FAULTS_SOAK=1) runs for hours, `--duration SECONDS` sets
 * the budget, `--seed N` (or VTPM_FAULTS_SEED) replays a run's choices,
 * `--only KIND,...` restricts the faults; VTPM_FAULTS_KEEP_LOGS=1 keeps every
 * process's log (a failed scenario's always are). Needs root (tmpfs mounts).
 * Exits non-zero when any invariant was violated.
 */
import { emptyFigures, FAULT_KINDS, type FaultKind, recoveryLines } from './figures.js';
import { Prng } from './prng.js';
import { Scenario } from './scenario.js';

const BOUNDED_BUDGET_MS = 200_000;
const SOAK_BUDGET_MS = 4 * 3600_000;
/** A scenario's set-up, final checks and tear-down take about this much beyond its fault phase. */
const SCENARIO_OVERHEAD_MS = 45_000;
const SHORTEST_FAULT_PHASE_MS = 10_000;
/** A scenario's vault only grows (nothing is pruned, so that each generation is checked): longer runs run more. */
const LONGEST_FAULT_PHASE_MS = 160_000;

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

async function main(): Promise<number> {
  const { soak, seed, budgetMs, kinds } = options(process.argv.slice(2));
  const log = (line: string) => process.stdout.write(`${line}\n`);
  log(`faults: seed ${seed} (replay with --seed ${seed})${soak ? ', soak' : ''}, budget ${budgetMs / 1000} s`);
  log(
    'definitions: a write is acknowledged when the TPM answered it (what the guest was told); it is safe once ' +
      'a vault generation holding it is committed (in the vTPM history; known by the state digest after the ' +
      'write). Lost: a start read an older value than the promise covers (kill -9 of serve or of the agent, ' +
      "restart, stop, guest exit, kill -9 of QEMU: the last answered write; kill -9 of swtpm: the vault's last " +
      'committed one). Recovery point of a kill: how far the vault was behind what the guest had been told ' +
      '(the time between the answers of the two writes).',
  );
  const prng = new Prng(seed);
  const figures = emptyFigures();
  const owed = [...kinds];
  const started = Date.now();
  let passed = 0;
  const failed: Array<{ name: string; violations: string[] }> = [];
  for (let index = 1; ; index += 1) {
    const remaining = budgetMs - (Date.now() - started);
    const faultPhaseMs = Math.min(
      soak ? prng.int(30_000, 120_000) : LONGEST_FAULT_PHASE_MS,
      remaining - SCENARIO_OVERHEAD_MS,
    );
    if (faultPhaseMs < SHORTEST_FAULT_PHASE_MS && index > 1) break;
    const phase = Math.max(faultPhaseMs, SHORTEST_FAULT_PHASE_MS);
    const name = `scenario ${index}`;
    log(`${name}: fault phase ${Math.round(phase / 1000)} s`);
    // A guest boot costs seconds: one in the first scenario, and in every one of a soak.
    const withGuest = index === 1 || soak;
    const scenario = new Scenario(name, prng.fork(), figures, log, { kinds, owed, withGuest });
    const interrupted = (signal: NodeJS.Signals) => {
      log(`${name}: ${signal}, tearing down`);
      void scenario.interrupt().finally(() => process.exit(130));
    };
    process.once('SIGINT', interrupted).once('SIGTERM', interrupted);
    await scenario.run(phase, !soak);
    process.off('SIGINT', interrupted).off('SIGTERM', interrupted);
    if (scenario.violations.length === 0) passed += 1;
    else failed.push({ name, violations: scenario.violations });
    log(`${name}: ${scenario.violations.length === 0 ? 'passed' : `FAILED (${scenario.violations.length})`}`);
  }
  const { proxy } = figures;
  log('');
  log(`seed ${seed}; ${passed + failed.length} scenarios in ${Math.round((Date.now() - started) / 1000)} s`);
  log(`faults injected: ${FAULT_KINDS.map((k) => `${k} ${figures.faults[k]}`).join(', ')}`);
  log(
    `proxy: ${proxy.forwarded} requests forwarded, ${proxy.delayed} delayed, ${proxy.dropped} dropped, ` +
      `${proxy.duplicated} duplicated, ${proxy.replayed} replayed (${proxy.replaysTaken} answered 2xx)`,
  );
  log(
    `writes acknowledged ${figures.writesAcknowledged}, checked ${figures.writesChecked}, ` +
      `lost ${figures.writesLost}; vault generations verified to decrypt ${figures.generationsVerified}`,
  );
  log('recovery point at each kill (how far the vault was behind what the guest had been told):');
  for (const line of recoveryLines(figures)) log(line);
  for (const note of figures.notes) log(`note: ${note}`);
  for (const { name, violations } of failed) for (const v of violations) log(`${name} (seed ${seed}): ${v}`);
  const missing = kinds.filter((k) => figures.faults[k] === 0);
  if (missing.length > 0) log(`faults never injected: ${missing.join(', ')}`);
  log(`faults: ${passed} passed, ${failed.length} failed`);
  return failed.length === 0 && (soak || missing.length === 0) ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
    process.exit(2);
  },
);
