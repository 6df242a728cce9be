/**
 * What vtpm-manager's qemu hook costs where a libvirt user waits: `virsh start`
 * until it returns (the domain running) and `virsh destroy` until it returns
 * (powered off), for a domain without a TPM, one with libvirt's own emulator
 * backend and one with a vtpm-manager vTPM (`vtpm libvirt attach`), on a libvirt
 * host with the hook installed and on the same host with it uninstalled.
 *
 * The host is a libvirtd in namespaces of its own (test/e2e's
 * NamespacedLibvirtHost), so that neither the hook nor the restarts reach the
 * machine's own libvirtd; libvirtd reads its hooks when it starts, so the two
 * states alternate round by round, each behind a restart. Every start is a
 * later start (each domain ran once before the first round): the emulator's
 * swtpm_setup and the vTPM's manufacture are not in it. Each guest boots until
 * its console says so before it is destroyed, so that its TPM has been used.
 * QEMU probes its TPM while it initialises, before libvirt reports it running:
 * "to running" includes the TPM connected and answering.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { copyFile, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { buildInitramfs, findKernel } from '../test/e2e/support/guest.js';
import { NamespacedLibvirtHost } from '../test/e2e/support/libvirt-host.js';
import {
  domainXml,
  ensureLibvirtd,
  installVtpmCommands,
  waitForConsole,
  type TestDomain,
} from '../test/e2e/support/libvirt.js';
import { apiClient, benchRoot, serveAsProcess } from './harness.js';
import { table } from './stats.js';

const exec = promisify(execFile);
const DEFAULT_ROUNDS = 6;
const HOOK_CALLS = 20;
/** What libvirtd gives a hook: a clean environment (the script sets its own PATH). */
const HOOK_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' };
const HOST_NAME = 'vtpm-bench-virsh';
const KINDS = ['no TPM', 'emulator backend', 'vtpm-manager'] as const;
type Kind = (typeof KINDS)[number];
type HostState = 'hooked' | 'unhooked';

interface Samples {
  start: number[];
  destroy: number[];
}

/** Nearest-rank quantile of a sample set (small sets: the max is reported beside it). */
function quantile(samples: number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)] ?? Number.NaN;
}

async function timed(work: () => Promise<unknown>): Promise<number> {
  const begin = performance.now();
  await work();
  return performance.now() - begin;
}

/** The pids a namespaced host's daemons write, to wait for them to exit: the next libvirtd takes their pid files. */
async function daemonPids(dir: string): Promise<number[]> {
  const pids = await Promise.all(
    ['libvirtd', 'virtlogd'].map(async (daemon) =>
      Number((await readFile(join(dir, `${daemon}.pid`), 'utf8').catch(() => '')).trim()),
    ),
  );
  return pids.filter((pid) => pid > 0);
}

async function untilGone(pids: number[]): Promise<void> {
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  while (pids.some(alive)) await delay(20);
}

/** Runs `script` as libvirtd would, the domain XML on its stdin; resolves with its wall time once it exits 0. */
function hookCall(script: string, args: string[], xml: string): Promise<number> {
  const begin = performance.now();
  return new Promise((resolve, reject) => {
    const child = execFile('sh', [script, ...args], { env: HOOK_ENV }, (error, _stdout, stderr) =>
      error ? reject(new Error(`${args.join(' ')}: ${stderr || error.message}`)) : resolve(performance.now() - begin),
    );
    child.stdin!.end(xml);
  });
}

/**
 * The installed hook alone, each call as libvirtd makes it (prepare begin starts a vTPM, release end stops it),
 * against an empty hook that reads its input: what a hook costs at the least.
 */
async function hookCallsAlone(hookPath: string, xmls: Map<Kind, string>): Promise<Map<string, number[]>> {
  const empty = join(dirname(hookPath), 'empty-hook');
  await writeFile(empty, '#!/bin/sh\ncat >/dev/null\n', { mode: 0o755 });
  const calls = new Map<string, number[]>();
  const note = (key: string, ms: number) => calls.set(key, [...(calls.get(key) ?? []), ms]);
  for (let i = 0; i < HOOK_CALLS; i += 1) {
    for (const [kind, xml] of xmls) {
      for (const call of [
        ['prepare', 'begin'],
        ['release', 'end'],
      ]) {
        note(`empty hook|${call.join(' ')}`, await hookCall(empty, ['d', ...call, '-'], xml));
        note(`${kind}|${call.join(' ')}`, await hookCall(hookPath, [`bench-${i}`, ...call, '-'], xml));
      }
    }
  }
  await rm(empty);
  return calls;
}

export async function runVirshStartBenchmark(args: string[]): Promise<{ table: string; results: unknown }> {
  const roundsFlag = args.indexOf('--rounds');
  const rounds = roundsFlag === -1 ? DEFAULT_ROUNDS : Number(args[roundsFlag + 1]);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error('--rounds takes a whole number of rounds, 1 or more');
  // Set on this machine for npm, and ~0.1 s of every Node start; libvirtd gives its hooks a clean environment anyway.
  delete process.env.NODE_EXTRA_CA_CERTS;
  await ensureLibvirtd();
  const root = await benchRoot();
  const service = await serveAsProcess(join(root, 'data'));
  const api = apiClient(service.url, service.token);
  await installVtpmCommands(root);
  const env = { ...process.env, VTPM_URL: service.url, VTPM_DATA_DIR: join(root, 'data') };
  const vtpm = (...command: string[]) => exec('vtpm', command, { env });
  const kernel = join(root, 'vmlinuz');
  await copyFile(await findKernel(), kernel);
  const initramfs = await buildInitramfs(root);
  const hostDir = join(root, 'libvirt');
  const hooksDir = join(hostDir, 'etc', 'hooks');

  const domains = new Map<Kind, TestDomain>(
    KINDS.map((kind, i) => [
      kind,
      {
        name: `bench-virsh-${i}-${process.pid}`,
        uuid: randomUUID(),
        kernel,
        initramfs,
        console: join(root, `domain-${i}.console`),
        append: 'vtpm.hold=600',
        ...(kind === 'emulator backend' && {
          tpmXml: "<tpm model='tpm-crb'>\n  <backend type='emulator' version='2.0'/>\n</tpm>",
        }),
      },
    ]),
  );
  // libvirtd forgets its domains with each restart here; each is defined again from its XML.
  const definitions = new Map<Kind, string>([...domains].map(([kind, domain]) => [kind, domainXml(domain)]));

  let host: NamespacedLibvirtHost | undefined;
  const define = async (kind: Kind) => {
    const file = join(root, `${kind.replaceAll(' ', '-')}.xml`);
    await writeFile(file, definitions.get(kind)!);
    await host!.virsh('define', file);
  };
  const startHost = async (state: HostState) => {
    host = await NamespacedLibvirtHost.start(hostDir, HOST_NAME, {}, async () => {
      if (state === 'hooked') await vtpm('libvirt', 'install-hook', '--hooks-dir', hooksDir);
    });
    for (const kind of KINDS) await define(kind);
  };
  const stopHost = async (state: HostState) => {
    const pids = await daemonPids(hostDir);
    await host!.stop();
    await untilGone(pids);
    if (state === 'hooked') await vtpm('libvirt', 'uninstall-hook', '--hooks-dir', hooksDir);
  };

  /** One later start and destroy, checked: the guest booted with its TPM, and a vTPM is stopped once destroyed. */
  const run = async (kind: Kind): Promise<{ start: number; destroy: number }> => {
    const domain = domains.get(kind)!;
    await rm(domain.console, { force: true });
    const start = await timed(() => host!.virsh('start', domain.name));
    const console = await waitForConsole(domain, 'VTPM-HOLDING');
    if (/VTPM-DEVICES \/dev\/tpm0/.test(console) !== (kind !== 'no TPM'))
      throw new Error(`${domain.name} (${kind}) booted with the wrong TPM devices:\n${console.slice(-2000)}`);
    const destroy = await timed(() => host!.virsh('destroy', domain.name));
    if ((await host!.virsh('domstate', domain.name)).trim() !== 'shut off')
      throw new Error(`${domain.name} is not shut off once virsh destroy returned`);
    if (kind === 'vtpm-manager') {
      const { status } = (await api('GET', `/v1/vtpms/${domain.uuid}`)) as { status: string };
      if (status !== 'stopped') throw new Error(`the vTPM of ${domain.name} is ${status} once its domain is destroyed`);
    }
    return { start, destroy };
  };

  const samples = new Map<string, Samples>();
  const record = (kind: Kind, state: HostState, sample: { start: number; destroy: number }) => {
    const key = `${kind}|${state}`;
    const entry = samples.get(key) ?? { start: [], destroy: [] };
    entry.start.push(sample.start);
    entry.destroy.push(sample.destroy);
    samples.set(key, entry);
  };

  try {
    let state: HostState = 'hooked';
    await startHost(state);
    const vtpmDomain = domains.get('vtpm-manager')!;
    await vtpm('libvirt', 'attach', vtpmDomain.name, '--version', '2.0', '--model', 'tpm-crb', '--connect', host!.uri);
    definitions.set('vtpm-manager', await host!.virsh('dumpxml', '--inactive', vtpmDomain.name));
    // First starts: libvirt's swtpm_setup for the emulator backend, QEMU's first run of each domain.
    for (const kind of KINDS) await run(kind);
    const xmls = new Map<Kind, string>();
    for (const kind of KINDS) xmls.set(kind, await host!.virsh('dumpxml', domains.get(kind)!.name));
    const hookCalls = await hookCallsAlone(join(hooksDir, 'qemu'), xmls);
    for (let round = 0; round < rounds; round += 1) {
      // Alternating which state goes first: neither always follows a fresh restart of the other.
      for (const next of round % 2 === 0 ? (['unhooked', 'hooked'] as const) : (['hooked', 'unhooked'] as const)) {
        if (next !== state) {
          await stopHost(state);
          state = next;
          await startHost(state);
        }
        process.stderr.write(`round ${round + 1}/${rounds}, ${state}\n`);
        const order = [...KINDS.slice(round % KINDS.length), ...KINDS.slice(0, round % KINDS.length)];
        for (const kind of order) {
          // Without the hook nothing starts a vtpm-manager domain's vTPM: libvirt refuses to start it.
          if (kind === 'vtpm-manager' && state === 'unhooked') continue;
          record(kind, state, await run(kind));
        }
      }
    }
    await stopHost(state);
    host = undefined;
    return report(samples, hookCalls);
  } finally {
    await host?.stop();
    await rm(hooksDir, { recursive: true, force: true });
    service.child.kill('SIGTERM');
    await new Promise((resolve) => service.child.once('exit', resolve));
    await rm(root, { recursive: true, force: true });
  }
}

function report(samples: Map<string, Samples>, hookCalls: Map<string, number[]>): { table: string; results: unknown } {
  const get = (kind: Kind, state: HostState) => samples.get(`${kind}|${state}`)!;
  const ms = (value: number) => `${value.toFixed(0)} ms`;
  const rows: Array<Record<string, string | number>> = [];
  for (const what of ['start', 'destroy'] as const) {
    const emulatorUnhooked = quantile(get('emulator backend', 'unhooked')[what], 0.5);
    for (const kind of KINDS) {
      for (const state of ['unhooked', 'hooked'] as const) {
        const values = samples.get(`${kind}|${state}`)?.[what];
        if (!values) continue;
        const median = quantile(values, 0.5);
        const unhooked = samples.get(`${kind}|unhooked`)?.[what];
        rows.push({
          measure: what === 'start' ? 'virsh start to running' : 'virsh destroy to shut off',
          domain: kind,
          host: state,
          n: values.length,
          p50: ms(median),
          p90: ms(quantile(values, 0.9)),
          max: ms(Math.max(...values)),
          'p50 vs unhooked': unhooked ? (median / quantile(unhooked, 0.5)).toFixed(2) : '-',
          'p50 vs emulator, unhooked': (median / emulatorUnhooked).toFixed(2),
          'p50 - emulator, unhooked': `${(median - emulatorUnhooked).toFixed(0)} ms`,
        });
      }
    }
  }
  const tenths = (value: number) => `${value.toFixed(1)} ms`;
  const calls: Array<Record<string, string | number>> = [];
  for (const [key, values] of hookCalls) {
    const [kind, call] = key.split('|') as [string, string];
    const empty = quantile(hookCalls.get(`empty hook|${call}`)!, 0.5);
    calls.push({
      'hook call alone': call,
      domain: kind,
      n: values.length,
      p50: tenths(quantile(values, 0.5)),
      p90: tenths(quantile(values, 0.9)),
      max: tenths(Math.max(...values)),
      'p50 - empty hook': tenths(quantile(values, 0.5) - empty),
    });
  }
  return {
    table: `${table(rows)}\n\n${table(calls)}`,
    results: { virsh: Object.fromEntries(samples), hook_calls_ms: Object.fromEntries(hookCalls) },
  };
}
