/**
 * One running `swtpm socket` for one VM: a unix control socket that QEMU (by
 * itself, or through libvirt's external backend) connects to. swtpm runs in
 * its own process group so that it outlives a restart of the service, like a
 * VM outlives a restart of libvirtd; `--terminate` makes it exit when QEMU's
 * connection goes away, so a killed QEMU never leaves a TPM behind.
 */
import { rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { EmulatorError } from '../errors.js';
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';
import type { HostCapabilities } from './capabilities.js';
import { handOver, KEY_FD, spawnSwtpm } from './run-program.js';
import { SWTPM_KEY_OPTION, stateKeyMaterial } from './state-key.js';
import { socketAccepts } from './tpm-socket.js';
import { describeExit, noteInVtpmLog, openVtpmLog } from './vtpm-log.js';

export interface InstancePaths {
  stateDir: string;
  socket: string;
  pidFile: string;
  logFile: string;
}

interface ExitInfo {
  code: number | null;
  signal: string | null;
}

export interface SwtpmInstance {
  pid: number;
  /** Resolves once, when the process is gone. */
  exited: Promise<ExitInfo>;
}

const READY_TIMEOUT_MS = 10_000;
// swtpm usually accepts within 10 ms: probe every millisecond at first, then back off.
const READY_FAST_POLL_MS = 1;
const READY_FAST_WINDOW_MS = 100;
const READY_POLL_MS = 5;
const ADOPTED_POLL_MS = 200;

async function logTail(logFile: string): Promise<string> {
  try {
    return (await readFile(logFile, 'utf8')).trim().split('\n').slice(-10).join('\n');
  } catch {
    return '';
  }
}

export interface Confinement {
  /** The user swtpm switches to once it has its sockets and key (when the service runs as root). */
  runAs?: string | undefined;
  /** swtpm's seccomp profile, killing the process on a syscall outside it (when this swtpm supports it). */
  seccomp: boolean;
}

/** How a host confines its swtpms: as `swtpmUser` when there is one, under seccomp when this swtpm has it. */
export function hostConfinement(swtpmUser: { name: string } | undefined, capabilities: HostCapabilities): Confinement {
  return { runAs: swtpmUser?.name, seccomp: capabilities.swtpm.features.includes('cmdarg-seccomp') };
}

/** `swtpm socket`'s arguments for a launch; the benchmarks' anchor starts swtpm with these very ones. */
export function swtpmSocketArgs(
  spec: TpmSpec,
  paths: Pick<InstancePaths, 'stateDir' | 'socket' | 'pidFile'>,
  confinement: Confinement,
): string[] {
  return [
    'socket',
    ...(spec.version === '2.0' ? ['--tpm2'] : []),
    '--tpmstate',
    `dir=${paths.stateDir},mode=0600`,
    '--ctrl',
    `type=unixio,path=${paths.socket},mode=0600`,
    '--key',
    SWTPM_KEY_OPTION,
    '--pid',
    `file=${paths.pidFile}`,
    '--terminate',
    ...(confinement.runAs ? ['--runas', confinement.runAs] : []),
    ...(confinement.seccomp ? ['--seccomp', 'action=kill'] : []),
  ];
}

export async function launchSwtpm(
  spec: TpmSpec,
  paths: InstancePaths,
  stateKey: Buffer,
  confinement: Confinement,
): Promise<SwtpmInstance> {
  // Synchronous, as the working copy's preparation: two calls on the local disk, not two thread-pool trips.
  rmSync(paths.socket, { force: true });
  openVtpmLog(paths.logFile, `starting swtpm (TPM ${spec.version})`);
  const { child, failure: spawnFailure } = spawnSwtpm(swtpmSocketArgs(spec, paths, confinement), {
    logFile: paths.logFile,
    pipeFds: [KEY_FD],
    detached: true,
  });
  const exited = new Promise<ExitInfo>((resolve) =>
    child.once('exit', (code: number | null, signal: NodeJS.Signals | null) => resolve({ code, signal })),
  ).then(async (exit) => {
    await noteInVtpmLog(paths.logFile, describeExit(exit));
    return exit;
  });
  handOver(child, KEY_FD, stateKeyMaterial(stateKey));
  child.unref();

  const launched = Date.now();
  const deadline = launched + READY_TIMEOUT_MS;
  let gone: ExitInfo | undefined;
  void exited.then((info) => (gone = info));
  while (Date.now() < deadline) {
    if (gone) {
      throw new EmulatorError(
        `swtpm exited during start (${gone.signal ?? `status ${gone.code}`}): ` +
          `${(await logTail(paths.logFile)) || 'no output'}`,
        { log: paths.logFile },
      );
    }
    if (await socketAccepts(paths.socket)) {
      // Not waited for: a note cannot fail, and QEMU need not wait for it.
      void noteInVtpmLog(paths.logFile, `swtpm ready, pid ${child.pid}`);
      return { pid: child.pid!, exited };
    }
    await Promise.race([
      delay(Date.now() - launched < READY_FAST_WINDOW_MS ? READY_FAST_POLL_MS : READY_POLL_MS),
      spawnFailure,
    ]);
  }
  child.kill('SIGKILL');
  throw new EmulatorError(
    `swtpm did not open its socket ${paths.socket} within ${READY_TIMEOUT_MS / 1000} s: ` +
      `${await logTail(paths.logFile)}`,
    { log: paths.logFile },
  );
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes back a swtpm started by an earlier run of the service, if its pid file
 * names a live swtpm serving this very socket (a recycled pid is not adopted).
 */
export async function adoptSwtpm(paths: InstancePaths): Promise<SwtpmInstance | undefined> {
  let pid: number;
  try {
    pid = Number.parseInt((await readFile(paths.pidFile, 'utf8')).trim(), 10);
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return undefined;
  let commandLine: string;
  try {
    commandLine = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').join(' ');
  } catch {
    return undefined;
  }
  if (!commandLine.includes('swtpm') || !commandLine.includes(`path=${paths.socket},`)) return undefined;
  const exited = new Promise<ExitInfo>((resolve) => {
    const timer = setInterval(() => {
      if (!isAlive(pid)) {
        clearInterval(timer);
        resolve({ code: null, signal: null });
      }
    }, ADOPTED_POLL_MS);
    timer.unref();
  }).then(async (exit) => {
    await noteInVtpmLog(paths.logFile, describeExit(exit));
    return exit;
  });
  await noteInVtpmLog(paths.logFile, `swtpm pid ${pid} taken over by a restarted service`);
  return { pid, exited };
}

/** SIGTERM, then SIGKILL if swtpm has not gone after `graceMs`. */
export async function terminateSwtpm(instance: SwtpmInstance, graceMs = 5_000): Promise<void> {
  const signal = (name: NodeJS.Signals) => {
    try {
      process.kill(instance.pid, name);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
    }
  };
  signal('SIGTERM');
  const timedOut = Symbol('timeout');
  const outcome = await Promise.race([instance.exited, delay(graceMs, timedOut)]);
  if (outcome === timedOut) {
    signal('SIGKILL');
    await instance.exited;
  }
}
