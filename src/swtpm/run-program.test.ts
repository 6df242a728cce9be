/**
 * The programs the product runs never inherit its secrets: a long-lived,
 * guest-facing swtpm holding the HSM PIN or an API token would hand them to
 * whoever takes it over.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { runProgram, spawnSwtpm } from './run-program.js';

const SECRETS = { VTPM_PKCS11_PIN: '246810', VTPM_TOKEN: 'vtpm_secret-token' };
const dir = await mkdtemp(join(tmpdir(), 'vtpm-run-program-test-'));
const saved = Object.fromEntries(Object.keys(SECRETS).map((name) => [name, process.env[name]]));

before(() => Object.assign(process.env, SECRETS));
after(async () => {
  for (const [name, value] of Object.entries(saved))
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  await rm(dir, { recursive: true, force: true });
});

function parseEnviron(raw: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const entry of raw.split('\0').filter(Boolean)) {
    const at = entry.indexOf('=');
    env[entry.slice(0, at)] = entry.slice(at + 1);
  }
  return env;
}

function assertNoSecrets(env: Record<string, string>): void {
  for (const name of Object.keys(SECRETS)) assert.equal(env[name], undefined, `the child holds ${name}`);
  assert.deepEqual(
    Object.keys(env).filter((name) => name.startsWith('VTPM_')),
    [],
  );
  assert.equal(env.PATH, process.env.PATH);
}

describe("the environment of the product's children", () => {
  it('a program run through runProgram gets its own variables and none of VTPM_*', async () => {
    // cat is the child itself: /proc/self/environ is what runProgram gave it.
    const { stdout } = await runProgram('cat', ['/proc/self/environ'], { env: { TPM2TOOLS_TCTI: 'device:/dev/null' } });
    const env = parseEnviron(stdout);
    assertNoSecrets(env);
    assert.equal(env.TPM2TOOLS_TCTI, 'device:/dev/null');
  });

  it('a swtpm launched by the product has no VTPM_PKCS11_PIN or VTPM_TOKEN in /proc/<pid>/environ', async () => {
    const socket = join(dir, 'ctrl.sock');
    const { child, failure } = spawnSwtpm(
      ['socket', '--tpm2', '--tpmstate', `dir=${dir}`, '--ctrl', `type=unixio,path=${socket}`, '--terminate'],
      { logFile: join(dir, 'swtpm.log'), pipeFds: [] },
    );
    try {
      await Promise.race([failure, delay(200)]);
      assert.ok(child.pid !== undefined && child.exitCode === null, 'swtpm is running');
      assertNoSecrets(parseEnviron(await readFile(`/proc/${child.pid}/environ`, 'utf8')));
    } finally {
      child.kill('SIGKILL');
    }
  });
});
