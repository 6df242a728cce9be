/**
 * The bounded load run of CI: bench/load.ts with 200 clients for 30 s
 * (`npm run bench -- load` runs longer). Every answer must be the one asked
 * for and the service's memory flat after the warm-up; no times asserted.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runLoadBenchmark } from '../../bench/load.js';

describe('API under load', () => {
  it('answers hundreds of concurrent clients as asked while vTPMs sync, with flat memory', async () => {
    const { table, results } = await runLoadBenchmark(['--clients', '200', '--seconds', '30']);
    process.stdout.write(`${table}\n`);
    const { unexpected, growth } = results as { unexpected: unknown[]; growth: number };
    assert.deepEqual(unexpected.slice(0, 5), [], 'every answer is the one asked for');
    assert.ok(growth <= 0.15, `resident memory grew ${(growth * 100).toFixed(1)} % after the warm-up`);
    process.exitCode = 0;
  });
});
