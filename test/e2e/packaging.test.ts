/**
 * What the repository ships for operators, checked by the tools that read it:
 * the systemd units by systemd-analyze (verify finds unknown keys and bad
 * values; the offline security review keeps the sandboxing from being
 * dropped), the options their ExecStart lines pass by the `vtpm` command
 * itself, and the Prometheus alert rules by promtool (they load, and their
 * unit tests, packaging/prometheus/vtpm-alerts.test.yml, pass), naming only
 * metrics the product exports. systemd is not PID 1 on the machines the
 * tests run on, so the units are read here, not run (docs/operations.md).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { AgentMetrics, ControlPlaneMetrics } from '../../src/metrics/service-metrics.js';
import { CLI } from './support/service.js';

const exec = promisify(execFile);
const PACKAGING = fileURLToPath(new URL('../../../packaging/', import.meta.url));
const RULES = join(PACKAGING, 'prometheus', 'vtpm-alerts.yml');
/** systemd-analyze's exposure score runs from 0 (fully sandboxed) to 10; a root service with nothing set is 9.6. */
const MOST_EXPOSURE = 3.5;

const UNITS = [
  { file: 'vtpm.service', command: 'serve' },
  { file: 'vtpm-agent.service', command: 'agent' },
];

/** The options an ExecStart= line gives `vtpm COMMAND`. */
async function execStartOptions(unit: string, command: string): Promise<string[]> {
  // systemd joins a line ending in a backslash with the next.
  const text = (await readFile(join(PACKAGING, unit), 'utf8')).replaceAll('\\\n', ' ');
  const line = text.split('\n').find((l) => l.startsWith('ExecStart='));
  assert.ok(line, `${unit} has an ExecStart= line`);
  assert.match(line, new RegExp(`^ExecStart=/usr/bin/env vtpm ${command} `), `${unit} runs vtpm ${command}`);
  return [...line.matchAll(/\s(--[a-z-]+)/g)].map((m) => m[1]!);
}

describe('the systemd units', () => {
  for (const { file, command } of UNITS) {
    it(`${file} passes systemd-analyze verify without a warning`, async () => {
      const { stdout, stderr } = await exec('systemd-analyze', ['verify', join(PACKAGING, file)]);
      assert.equal(`${stdout}${stderr}`.trim(), '', `systemd-analyze verify ${file} complained`);
    });

    it(`${file} stays sandboxed`, async () => {
      // `security` exits non-zero when the unit is exposed beyond its threshold; the score is what counts here.
      const { stdout } = await exec('systemd-analyze', ['security', '--offline=true', join(PACKAGING, file)]).catch(
        (error: { stdout: string }) => ({ stdout: error.stdout }),
      );
      const score = Number(/Overall exposure level for .*: ([0-9.]+)/.exec(stdout)?.[1]);
      assert.ok(score <= MOST_EXPOSURE, `${file}: exposure ${score}, at most ${MOST_EXPOSURE}\n${stdout}`);
      for (const setting of ['NoNewPrivileges=', 'ProtectSystem=', 'CapabilityBoundingSet=~CAP_SYS_ADMIN']) {
        assert.match(stdout, new RegExp(`✓ ${setting.replace(/[.*+?^${}()|[\]\\~]/g, '\\$&')}`), `${file}: ${setting}`);
      }
    });

    it(`${file} passes only options vtpm ${command} takes`, async () => {
      const { stdout: help } = await exec(process.execPath, [CLI, command, '--help']);
      const options = await execStartOptions(file, command);
      assert.ok(options.length > 0);
      for (const option of options) assert.ok(help.includes(option), `vtpm ${command} has no ${option}`);
    });
  }
});

describe('the Prometheus alert rules', () => {
  it('load in promtool', async () => {
    const { stdout } = await exec('promtool', ['check', 'rules', RULES]);
    assert.match(stdout, /SUCCESS: [1-9][0-9]* rules found/);
  });

  it('fire as their unit tests say: host down, sync lag rising, key manager failing and the rest', async () => {
    const tests = join(PACKAGING, 'prometheus', 'vtpm-alerts.test.yml');
    const { stdout } = await exec('promtool', ['test', 'rules', tests]).catch((error: { stdout: string }) =>
      assert.fail(`promtool test rules failed:\n${error.stdout}`),
    );
    assert.match(stdout, /SUCCESS/);
    const alerts = [...(await readFile(RULES, 'utf8')).matchAll(/- alert: (\w+)/g)].map((m) => m[1]!);
    const tested = await readFile(tests, 'utf8');
    for (const alert of alerts) {
      assert.ok(tested.includes(`alertname: ${alert}`), `${alert} has a unit test`);
    }
  });

  it('name only metrics that vtpm serve or vtpm agent exports', async () => {
    const exported = new Set<string>();
    for (const metrics of [new ControlPlaneMetrics(), new AgentMetrics()]) {
      for (const metric of await metrics.registry.getMetricsAsJSON()) exported.add(metric.name);
    }
    const named = [...(await readFile(RULES, 'utf8')).matchAll(/\b(vtpm_[a-z_]+)/g)].map((m) =>
      m[1]!.replace(/_(bucket|sum|count)$/, ''),
    );
    assert.ok(named.length >= 4);
    for (const name of named) assert.ok(exported.has(name), `the rules name ${name}, which nothing exports`);
  });
});
