/**
 * `npm run bench -- <scenario>`: each scenario prints a table with its anchor
 * measured in the same run, and writes JSON under bench/results/.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { runCliBenchmark } from './cli.js';
import { runControlPlaneBenchmark } from './control-plane.js';
import { runDensityBenchmark } from './density.js';
import { runLoadBenchmark } from './load.js';
import { runProvisionBenchmark } from './provision.js';
import { runStartBenchmark } from './start.js';
import { runSyncBenchmark } from './sync.js';
import { runThroughputBenchmark } from './throughput.js';
import { runVirshStartBenchmark } from './virsh-start.js';

const scenarios: Record<string, (args: string[]) => Promise<{ table: string; results: unknown }>> = {
  sync: runSyncBenchmark,
  provision: runProvisionBenchmark,
  start: runStartBenchmark,
  density: runDensityBenchmark,
  throughput: runThroughputBenchmark,
  api: runControlPlaneBenchmark,
  load: runLoadBenchmark,
  cli: runCliBenchmark,
  virsh: runVirshStartBenchmark,
};

const [name = 'sync', ...args] = process.argv.slice(2);
const scenario = scenarios[name];
if (!scenario) {
  process.stderr.write(`unknown benchmark "${name}"; scenarios: ${Object.keys(scenarios).join(', ')}\n`);
  process.exit(2);
}
const machine = {
  cpus: cpus().length,
  cpu: cpus()[0]?.model ?? 'unknown',
  memory_gib: Math.round(totalmem() / 2 ** 30),
  node: process.version,
};
const started = new Date();
const { table, results } = await scenario(args);
process.stdout.write(
  `\n${name} (${machine.cpus} x ${machine.cpu}, ${machine.memory_gib} GiB, Node ${machine.node})\n${table}\n`,
);
const dir = join(process.cwd(), 'bench', 'results');
await mkdir(dir, { recursive: true });
const file = join(dir, `${name}-${started.toISOString().replaceAll(':', '-')}.json`);
await writeFile(file, JSON.stringify({ scenario: name, started: started.toISOString(), machine, results }, null, 2));
process.stdout.write(`results written to ${file}\n`);
