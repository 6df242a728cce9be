/**
 * Two hosts: the control plane's own and a second one whose agent runs as
 * `vtpm agent` (its own process, data and run directories). A vTPM runs on
 * the second host and its state reaches the vault; a stopped vTPM moves
 * between hosts by starting elsewhere; and a running vTPM follows its guest
 * through a live migration of real QEMUs, after which the guest's writes on
 * the new host are in the vault. Reports without the host's token are refused.
 * A host that drops off is down; evacuated, its vTPM boots on another host
 * with every write the vault acknowledged, and when the host comes back the
 * swtpm it still ran is stopped.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { AgentUnderTest } from './support/agent.js';
import {
  buildInitramfs,
  findKernel,
  GUEST_NV_DATA,
  launchGuest,
  responseCode,
  responsesOf,
  type GuestReport,
} from './support/guest.js';
import { freePort } from './support/net.js';
import { Qmp } from './support/qmp.js';
import { ServiceUnderTest, serviceForFile, temporaryDir, type StartedJson, type VtpmJson } from './support/service.js';
import { selfSignedCertificate } from './support/tls.js';

let kernel = '';
let initramfs = '';
let agent: AgentUnderTest | undefined;
let agentDir = '';
let localHost = '';
const REMOTE = 'host-b';
const exec = promisify(execFile);

const context = serviceForFile(
  'vtpm-fleet',
  async ({ service, workDir }) => {
    kernel = await findKernel();
    initramfs = await buildInitramfs(workDir);
    localHost = (await service.json<Array<{ name: string; agent_url: string | null }>>('hosts')).find(
      (h) => h.agent_url === null,
    )!.name;
    agentDir = await temporaryDir('vtpm-host-b');
    agent = await AgentUnderTest.start(service, agentDir, REMOTE);
    // A fixed address, kept across a restart of the service: the agent reports to it.
  },
  async () => ['--pool-size', '0', '--listen', `127.0.0.1:${await freePort()}`],
);

after(async () => {
  await agent?.stop();
  if (agentDir) await rm(agentDir, { recursive: true, force: true });
});

async function bootOn(vm: string, host: string): Promise<GuestReport> {
  const started = await context.service.json<StartedJson>('start', vm, '--host', host);
  const report = await launchGuest({ kernel, initramfs, qemuArgs: started.qemu_args, commandSet: 'nv' }).report;
  await context.service.waitForStatus(vm, 'stopped');
  return report;
}

describe('a second host with its own agent', () => {
  it('runs a vTPM whose state reaches the vault, and a stopped vTPM starts on either host', async () => {
    const vm = randomUUID();
    await context.service.json('create', '--vm', vm, '--version', '2.0');
    const onRemote = await bootOn(vm, REMOTE);
    assert.equal(responseCode(onRemote.responses['3-write']!), 0, 'the guest on host-b wrote its NV index');
    const shown = await context.service.json<VtpmJson>('show', vm);
    assert.equal(shown.host, REMOTE);
    const hosts = await context.service.json<Array<{ name: string; agent_url: string | null }>>('hosts');
    assert.match(
      hosts.find((h) => h.name === REMOTE)?.agent_url ?? '',
      /^http:\/\/127\.0\.0\.1:\d+$/,
      'host-b is listed with its agent',
    );
    const history = await context.service.json<Array<{ kind: string; reason: string }>>('history', vm);
    assert.ok(
      history.some((g) => g.kind === 'tpm' && g.reason !== 'create'),
      `host-b's state is in the vault: ${JSON.stringify(history)}`,
    );

    const badHost = await context.service.cli('start', vm, '--host', 'no such/host');
    assert.equal(badHost.code, 2, badHost.stderr);
    assert.match(badHost.stderr, /host: expected a host name/);
    const unknownHost = await context.service.cli('start', vm, '--host', 'host-z');
    assert.equal(unknownHost.code, 4, unknownHost.stderr);
    assert.match(unknownHost.stderr, /host host-z has no agent connected/);
    assert.equal(
      (await context.service.json<VtpmJson>('show', vm)).status,
      'stopped',
      'a refused start changes nothing',
    );

    const onLocal = await bootOn(vm, localHost);
    assert.ok(
      onLocal.responses['1-data']!.includes(GUEST_NV_DATA),
      'back on the first host, the guest reads what it wrote on host-b',
    );
    assert.deepEqual(onLocal.responses['7-ekpublic'], onRemote.responses['7-ekpublic'], 'the same EK');
  });

  it("refuses reports that do not carry the host's agent token", async () => {
    const report = (token: string) =>
      fetch(`${context.service.url}/agent/v1/hosts/${REMOTE}/exits`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ vm: randomUUID(), code: 0, signal: null }),
      });
    assert.equal((await report('not-the-token')).status, 401);
    const adminToken = (await readFile(join(context.service.dataDir, 'admin.token'), 'utf8')).trim();
    assert.equal((await report(adminToken)).status, 401, "a user's token, even an admin's, does not speak for a host");
  });
});

describe('placement across the hosts', () => {
  it('keeps new vTPMs off a disabled host, and names every host with its reason when none is left', async () => {
    const { service } = context;
    const disabled = await service.cli('host', 'disable', localHost, '--reason', 'kernel upgrade');
    assert.equal(disabled.code, 0, disabled.stderr);
    try {
      const hosts =
        await service.json<Array<{ name: string; status: string; disabled_reason: string | null }>>('hosts');
      assert.deepEqual(
        hosts.map((h) => [h.name, h.status, h.disabled_reason]).sort(),
        [
          [localHost, 'disabled', 'kernel upgrade'],
          [REMOTE, 'enabled', null],
        ].sort(),
      );
      const vm = randomUUID();
      await service.json('create', '--vm', vm, '--version', '2.0');
      assert.equal((await service.json<VtpmJson>('show', vm)).host, REMOTE, 'placed on the host still enabled');

      assert.equal((await service.cli('host', 'disable', REMOTE)).code, 0);
      const refused = await service.cli('create', '--vm', randomUUID(), '--version', '2.0');
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr, new RegExp(`${localHost} is disabled \\(kernel upgrade\\)`));
      assert.match(refused.stderr, new RegExp(`${REMOTE} is disabled \\(disabled by an admin\\)`));
    } finally {
      for (const host of [localHost, REMOTE]) assert.equal((await service.cli('host', 'enable', host)).code, 0);
    }
    const after = await service.json<Array<{ status: string; state: string }>>('hosts');
    assert.ok(after.every((h) => h.status === 'enabled' && h.state === 'up'));
  });

  it('drains a host: its stopped vTPMs move off it, and it stays draining until enabled', async () => {
    const { service } = context;
    const vm = randomUUID();
    await service.json('create', '--vm', vm, '--version', '2.0');
    await service.json('start', vm, '--host', REMOTE);
    await service.json('stop', vm);
    assert.deepEqual(
      [(await service.json<VtpmJson>('show', vm)).host, (await service.json<VtpmJson>('show', vm)).status],
      [REMOTE, 'stopped'],
    );
    try {
      const drained = await service.json<{ vtpms: Array<{ vm: string; result: string; to: string }> }>(
        'host',
        'drain',
        REMOTE,
        '--reason',
        'retiring',
      );
      const moved = drained.vtpms.find((v) => v.vm === vm);
      assert.deepEqual([moved?.result, moved?.to], ['moved', localHost], JSON.stringify(drained));
      assert.equal((await service.json<VtpmJson>('show', vm)).host, localHost);
      const hosts = await service.json<Array<{ name: string; status: string }>>('hosts');
      assert.equal(hosts.find((h) => h.name === REMOTE)?.status, 'draining');
      const table = await service.cli('hosts');
      assert.match(table.stdout, /draining \(retiring\)/);
    } finally {
      assert.equal((await service.cli('host', 'enable', REMOTE)).code, 0);
    }
  });
});

describe('live migration', () => {
  it(
    'the vTPM follows its guest from one QEMU to another on host-b; ' +
      'the guest then writes there, and the write is in the vault',
    async () => {
      await migrateAndCheck();
    },
  );

  it('a migration that completes while the control plane is down is found completed when it starts again', async () => {
    await migrateAndCheck((move) => context.restart(move));
  });
});

/**
 * Starts a guest on the first host whose TPM commands wait 20 s, prepares the vTPM's migration to
 * host-b, migrates the guest there over QMP (through `around`, e.g. with the control plane down),
 * and checks the vTPM now runs on host-b and what the guest writes there reaches the vault.
 */
async function migrateAndCheck(around: (move: () => Promise<void>) => Promise<void> = (move) => move()): Promise<void> {
  const vm = randomUUID();
  await context.service.json('create', '--vm', vm, '--version', '2.0');
  const started = await context.service.json<StartedJson>('start', vm, '--host', localHost);
  const qmpSocket = join(context.workDir, `${vm}.qmp`);
  // The guest waits before its TPM commands: they run after the migration, on host-b.
  const source = launchGuest({
    kernel,
    initramfs,
    qemuArgs: started.qemu_args,
    commandSet: 'nv',
    delaySeconds: 20,
    extraArgs: ['-qmp', `unix:${qmpSocket},server=on,wait=off`],
  });
  source.report.catch(() => undefined);
  while (!source.waiting()) await delay(100);

  const prepared = await context.service.json<StartedJson & { from: string; to: string }>(
    'migrate',
    vm,
    '--to',
    REMOTE,
  );
  assert.equal(prepared.status, 'migrating');
  assert.equal(prepared.from, localHost);
  assert.match(prepared.socket, new RegExp(`^${agent!.runDir}/`), "the destination's socket is host-b's");
  const port = await freePort();
  const destinationQmp = join(context.workDir, `${vm}.incoming.qmp`);
  const destination = launchGuest({
    kernel,
    initramfs,
    qemuArgs: prepared.qemu_args,
    commandSet: 'nv',
    extraArgs: ['-incoming', `tcp:127.0.0.1:${port}`, '-qmp', `unix:${destinationQmp},server=on,wait=off`],
  });
  // Its monitor answering means the destination QEMU is up and listening for the migration.
  (await Qmp.connect(destinationQmp)).close();
  await around(async () => {
    const qmp = await Qmp.connect(qmpSocket);
    try {
      await qmp.migrate(`tcp:127.0.0.1:${port}`);
      await qmp.execute('quit');
    } finally {
      qmp.close();
    }
  });
  // The source's swtpm leaves with its QEMU: that completes the migration.
  const deadline = Date.now() + 30_000;
  let shown = await context.service.json<VtpmJson>('show', vm);
  while (shown.host !== REMOTE && Date.now() < deadline) {
    await delay(100);
    shown = await context.service.json<VtpmJson>('show', vm);
  }
  assert.deepEqual([shown.host, shown.status], [REMOTE, 'running']);
  // A stop from the host the guest left (what its libvirt hook sends) leaves the vTPM alone.
  assert.equal((await context.service.json<VtpmJson>('stop', vm, '--host', localHost)).status, 'running');

  const report = await destination.report;
  assert.equal(responseCode(report.responses['3-write']!), 0, 'the migrated guest wrote its NV index on host-b');
  await context.service.waitForStatus(vm, 'stopped').catch((error: Error) => {
    throw new Error(`${error.message}\nhost-b's agent:\n${agent?.log}\ncontrol plane:\n${context.service.log}`);
  });
  const again = await bootOn(vm, localHost);
  assert.ok(
    again.responses['1-data']!.includes(GUEST_NV_DATA),
    'what the guest wrote after the migration is in the vault',
  );
}

describe('TLS between the control plane and an agent', () => {
  it(
    "each side checks the other's certificate; " + "an agent that does not trust the control plane's never reports in",
    async () => {
      const dir = await temporaryDir('vtpm-fleet-tls');
      const savedCa = process.env.VTPM_CA_FILE;
      let service: ServiceUnderTest | undefined;
      const agents: AgentUnderTest[] = [];
      try {
        const { cert, key } = await selfSignedCertificate(dir);
        service = await ServiceUnderTest.start(join(dir, 'data'), [
          '--pool-size',
          '0',
          '--tls-cert',
          cert,
          '--tls-key',
          key,
          '--agent-ca-file',
          cert,
        ]);
        process.env.VTPM_CA_FILE = cert;
        const tls = ['--tls-cert', cert, '--tls-key', key];

        const { VTPM_CA_FILE: _trusted, ...untrusting } = process.env;
        const distrustful = await AgentUnderTest.start(service, join(dir, 'host-c'), 'host-c', {
          https: true,
          extraArgs: tls,
          env: untrusting,
          untilReportedIn: false,
        });
        agents.push(distrustful);

        const trusting = await AgentUnderTest.start(service, join(dir, 'host-d'), 'host-d', {
          https: true,
          extraArgs: tls,
        });
        agents.push(trusting);
        const vm = randomUUID();
        await service.json('create', '--vm', vm, '--version', '2.0');
        const started = await service.json<StartedJson>('start', vm, '--host', 'host-d');
        assert.match(
          started.socket,
          new RegExp(`^${trusting.runDir}/`),
          "the control plane reached host-d's agent over HTTPS",
        );
        await service.json('stop', vm);

        assert.match(
          distrustful.log,
          /TLS certificate is not one this client trusts/,
          "host-c's agent refused the control plane's certificate",
        );
        const hostC = (await service.json<Array<{ name: string; traits: string[] }>>('hosts')).find(
          (h) => h.name === 'host-c',
        );
        assert.deepEqual(hostC?.traits, [], 'and so never reported in');
        await service.json('delete', '--yes', vm);
      } finally {
        if (savedCa === undefined) delete process.env.VTPM_CA_FILE;
        else process.env.VTPM_CA_FILE = savedCa;
        for (const agent of agents) await agent.stop();
        await service?.stop();
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
});

/** The swtpm processes serving `vm` on this machine, by pid. */
async function swtpmsOf(vm: string): Promise<number[]> {
  const { stdout } = await exec('ps', ['-eo', 'pid=,args=']);
  return stdout
    .split('\n')
    .filter((line) => /\bswtpm socket\b/.test(line) && line.includes(vm))
    .map((line) => Number.parseInt(line.trim(), 10));
}

describe('a host lost', () => {
  it('is evacuated: its vTPM boots on another host with every acknowledged write; back, its stale swtpm is stopped', {
    timeout: 300_000,
  }, async () => {
    const { service } = context;
    const vm = randomUUID();
    await service.json('create', '--vm', vm, '--version', '2.0');
    const started = await service.json<StartedJson>('start', vm, '--host', REMOTE);
    const lost = launchGuest({ kernel, initramfs, qemuArgs: started.qemu_args, commandSet: 'nv', holdSeconds: 600 });
    lost.report.catch(() => undefined);
    try {
      while (!lost.holding()) await delay(200);
      assert.equal(responseCode(responsesOf(lost.console())['3-write']!), 0, 'the guest on host-b wrote its NV index');
      // Every write the guest made is acknowledged once the vault's history stops growing.
      let history = '';
      for (let quiet = 0; quiet < 4; ) {
        const now = JSON.stringify(await service.json('history', vm));
        quiet = now === history && now.includes('"sync"') ? quiet + 1 : 0;
        history = now;
        await delay(500);
      }
      const [stale] = await swtpmsOf(vm);
      assert.ok(stale, 'host-b runs its swtpm');

      // host-b drops off: its agent is frozen, its swtpm and its guest run on.
      agent!.freeze();
      try {
        const deadline = Date.now() + 40_000;
        const stateOfRemote = async () =>
          (await service.json<Array<{ name: string; state: string }>>('hosts')).find((h) => h.name === REMOTE)?.state;
        while ((await stateOfRemote()) !== 'down' && Date.now() < deadline) await delay(500);
        assert.equal(await stateOfRemote(), 'down');

        const evacuation = await service.json<{ vtpms: Array<{ vm: string; result: string; to: string }> }>(
          'evacuate',
          REMOTE,
        );
        const moved = evacuation.vtpms.find((v) => v.vm === vm);
        assert.deepEqual([moved?.result, moved?.to], ['moved', localHost], JSON.stringify(evacuation));
        const onLocal = await bootOn(vm, localHost);
        assert.ok(
          onLocal.responses['1-data']!.includes(GUEST_NV_DATA),
          'on the other host, the guest reads what it wrote on the lost one',
        );
      } finally {
        agent!.thaw();
      }

      // Back: the control plane stops the swtpm host-b still ran for a vTPM that is no longer its.
      const deadline = Date.now() + 30_000;
      while ((await swtpmsOf(vm)).includes(stale) && Date.now() < deadline) await delay(250);
      assert.deepEqual(await swtpmsOf(vm), [], `the stale swtpm is stopped\n${service.log}`);
      const events = await service.json<Array<{ operation: string; detail: { host?: string } }>>('events', '--vm', vm);
      assert.ok(events.some((e) => e.operation === 'vtpm.fence' && e.detail.host === REMOTE));
      assert.ok(events.some((e) => e.operation === 'vtpm.evacuate'));
      assert.equal((await service.json<VtpmJson>('show', vm)).host, localHost);
    } finally {
      lost.kill('SIGKILL');
    }
  });
});

describe('host liveness', () => {
  it('a host whose agent stops is down within --host-down-after, and the scheduler says so', async () => {
    const { service } = context;
    type Listed = Array<{ name: string; state: string }>;
    const remoteState = async () => (await service.json<Listed>('hosts')).find((h) => h.name === REMOTE)?.state;
    assert.equal(await remoteState(), 'up', 'its agent sends heartbeats');
    await agent?.stop();
    agent = undefined;
    // The default --host-down-after is 15 s; a heartbeat may have arrived just before the stop.
    const deadline = Date.now() + 40_000;
    while ((await remoteState()) !== 'down' && Date.now() < deadline) await delay(500);
    assert.equal(await remoteState(), 'down');

    assert.equal((await service.cli('host', 'disable', localHost)).code, 0);
    try {
      const refused = await service.cli('create', '--vm', randomUUID(), '--version', '2.0');
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr, new RegExp(`${REMOTE} is down \\(its agent was last heard of at `));
    } finally {
      assert.equal((await service.cli('host', 'enable', localHost)).code, 0);
    }
  });
});
