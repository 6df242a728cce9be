/**
 * A second libvirt host on the same machine, for live migration: its own
 * mount and UTS namespaces (hostname, /etc/libvirt, /run/libvirt,
 * /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt bind-mounted from
 * the test's directory), its own host UUID, its own virtlogd and libvirtd,
 * reachable over TCP on 127.0.0.1. The network is shared, so QEMU migrates
 * over loopback. libvirt refuses to migrate to "the same host" by hostname
 * and host UUID; both differ here.
 *
 * Paths given in `sameAs` are bind-mounted from host-specific directories,
 * so that the same path (the vTPM run directory) is a different directory on
 * each host, as on two machines.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { freePort } from './net.js';

const exec = promisify(execFile);
const LIBVIRT_DIRS = {
  etc: '/etc/libvirt',
  run: '/run/libvirt',
  lib: '/var/lib/libvirt',
  log: '/var/log/libvirt',
  cache: '/var/cache/libvirt',
} as const;

export class NamespacedLibvirtHost {
  private constructor(
    readonly name: string,
    readonly uri: string,
    readonly dir: string,
    private readonly holder: ChildProcess,
  ) {}

  /** Runs a command inside this host's namespaces. */
  get enter(): string[] {
    return ['nsenter', '-t', String(this.holder.pid), '-m', '-u', '--'];
  }

  get hooksDir(): string {
    return join(this.dir, 'etc', 'hooks');
  }

  /**
   * Sets the host up and starts its daemons; `beforeStart` runs once its /etc/libvirt exists
   * (libvirtd reads hooks only when it starts). Resolves once libvirtd answers.
   */
  static async start(
    dir: string,
    name: string,
    sameAs: Record<string, string>,
    beforeStart: (host: NamespacedLibvirtHost) => Promise<void>,
  ): Promise<NamespacedLibvirtHost> {
    for (const sub of [...Object.keys(LIBVIRT_DIRS), 'log/qemu']) await mkdir(join(dir, sub), { recursive: true });
    await cp('/etc/libvirt', join(dir, 'etc'), { recursive: true });
    // Neither the first host's hook, nor its domains, nor its secrets come along.
    await rm(join(dir, 'etc', 'hooks'), { recursive: true, force: true });
    await rm(join(dir, 'etc', 'qemu'), { recursive: true, force: true });
    await rm(join(dir, 'etc', 'secrets'), { recursive: true, force: true });
    await mkdir(join(dir, 'etc', 'hooks'));
    const port = await freePort();
    const migrationPorts = 49500 + (port % 400);
    await writeFile(
      join(dir, 'etc', 'libvirtd.conf'),
      [
        `host_uuid = "${randomUUID()}"`,
        'listen_tls = 0',
        'listen_tcp = 1',
        'listen_addr = "127.0.0.1"',
        `tcp_port = "${port}"`,
        'auth_tcp = "none"',
        '',
      ].join('\n'),
    );
    // Both hosts would otherwise share cgroup directories named after the same domain.
    const qemuConf = await readFile(join(dir, 'etc', 'qemu.conf'), 'utf8');
    await writeFile(
      join(dir, 'etc', 'qemu.conf'),
      `${qemuConf}cgroup_controllers = [ ]\n` +
        `migration_port_min = ${migrationPorts}\nmigration_port_max = ${migrationPorts + 20}\n`,
    );
    const mounts = [
      ...Object.entries(LIBVIRT_DIRS).map(([sub, target]) => [join(dir, sub), target] as const),
      ...Object.entries(sameAs).map(([target, source]) => [source, target] as const),
    ];
    const script = [
      'set -e',
      `hostname ${name}`,
      ...mounts.map(([source, target]) => `mount --bind '${source}' '${target}'`),
      `virtlogd -d -p '${join(dir, 'virtlogd.pid')}'`,
      'echo ready',
      'exec sleep infinity',
    ].join('\n');
    const holder = spawn('unshare', ['--mount', '--uts', '--propagation', 'private', 'sh', '-c', script], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    holder.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    holder.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    while (!output.includes('ready')) {
      if (holder.exitCode !== null) throw new Error(`the namespace of host ${name} did not come up: ${output}`);
      await delay(50);
    }
    const host = new NamespacedLibvirtHost(name, `qemu+tcp://127.0.0.1:${port}/system`, dir, holder);
    await beforeStart(host);
    await exec(host.enter[0]!, [
      ...host.enter.slice(1),
      'libvirtd',
      '-d',
      '-l',
      '-p',
      join(dir, 'libvirtd.pid'),
      '-f',
      '/etc/libvirt/libvirtd.conf',
    ]);
    // A fresh capability cache makes libvirtd probe QEMU first.
    for (let i = 0; i < 600; i += 1) {
      if (
        await host.virsh('hostname').then(
          () => true,
          () => false,
        )
      )
        return host;
      await delay(100);
    }
    throw new Error(`libvirtd of host ${name} did not answer within 60 s`);
  }

  async virsh(...args: string[]): Promise<string> {
    return (await exec('virsh', ['-c', this.uri, ...args], { timeout: 120_000 })).stdout;
  }

  /** Stops what this host runs (domains, daemons, then the namespace). */
  async stop(): Promise<void> {
    for (const domain of (await this.virsh('list', '--name').catch(() => '')).split('\n').filter(Boolean))
      await this.virsh('destroy', domain).catch(() => undefined);
    for (const daemon of ['libvirtd', 'virtlogd']) {
      const pid = Number((await readFile(join(this.dir, `${daemon}.pid`), 'utf8').catch(() => '')).trim());
      if (pid && (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim() === daemon)
        process.kill(pid, 'SIGTERM');
    }
    this.holder.kill('SIGKILL');
  }
}
