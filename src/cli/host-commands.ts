/**
 * `vtpm host add` (register a host whose agent runs remotely), `vtpm host
 * disable|drain|enable` (keep new vTPMs off a host, move its vTPMs off it, or neither), `vtpm evacuate`
 * (move the vTPMs of a host that is down to others), `vtpm agent`
 * (run that agent), and `vtpm migrate` (move a running vTPM live to another
 * host, for the migration of its VM).
 */
import { hostname } from 'node:os';
import type { Command } from 'commander';
import type { HostVacated, HostList, HostStateChanged, PoolStatus, RegisteredHost } from '../api/hosts.js';
import type { Migration } from '../api/vtpms.js';
import { InvalidArgumentError } from '../errors.js';
import { client, emit, globals, vmPath, withClientOptions, withDataDir } from './context.js';
import { defaultRunDir, defaultScratchDir } from './defaults.js';
import { fields, table } from './output.js';
import { positiveInteger } from './parsers.js';

const DEFAULT_AGENT_LISTEN = '127.0.0.1:7391';

/** What `vtpm evacuate` and `vtpm host drain` did with each vTPM, and the counts. */
function vacatedTable(vacated: HostVacated): string {
  const count = (result: string) => vacated.vtpms.filter((v) => v.result === result).length;
  const rows = vacated.vtpms.map((v) => ({ ...v, to: v.to ?? '-', generation: v.generation ?? '-' }));
  return [
    table(rows, ['vm', 'result', 'to', 'status', 'generation', 'reason']),
    `host ${vacated.host}: ${count('moved')} moved, ${count('stays')} stay, ${count('skipped')} skipped`,
  ].join('\n');
}

export function registerHostCommands(program: Command): void {
  withClientOptions(program.command('pool'))
    .description('TPMs manufactured ahead of demand, per version')
    .action(async (_options: unknown, command: Command) => {
      const pool = await (await client(command)).request<PoolStatus>('GET', '/v1/pool');
      emit(command, pool, () =>
        table(
          Object.entries(pool.ready).map(([version, ready]) => ({ version, ready, target: pool.size })),
          ['version', 'ready', 'target'],
        ),
      );
    });

  withClientOptions(program.command('hosts'))
    .description('hosts, their traits and how many vTPMs they hold')
    .action(async (_options: unknown, command: Command) => {
      const { hosts } = await (await client(command)).request<HostList>('GET', '/v1/hosts');
      emit(command, hosts, () =>
        table(
          hosts.map((h) => ({
            name: h.name,
            vtpms: h.max_vtpms === null ? h.vtpms : `${h.vtpms}/${h.max_vtpms}`,
            running: h.running,
            state: h.state,
            status: h.disabled_reason === null ? h.status : `${h.status} (${h.disabled_reason})`,
            'last seen': h.last_seen,
            traits: h.traits.join(','),
            agent: h.agent_url ?? '(in vtpm serve)',
          })),
          ['name', 'state', 'status', 'vtpms', 'running', 'last seen', 'traits', 'agent'],
        ),
      );
    });

  const host = program.command('host').description('hosts whose agent runs remotely');

  withClientOptions(host.command('add'))
    .description("register a host whose agent runs remotely; prints the agent's token, once (admin)")
    .argument('<name>', 'the host name its agent reports (vtpm agent --name; default its hostname)')
    .requiredOption('--agent-url <url>', "the agent's API, https://HOST:7391 (http only on loopback)")
    .action(async (name: string, options: { agentUrl: string }, command: Command) => {
      const added = await (await client(command)).request<RegisteredHost>('POST', '/v1/hosts', {
        name,
        url: options.agentUrl,
      });
      emit(command, added, () =>
        [
          `host ${added.name}: agent at ${added.url}`,
          `agent token (shown once; put it in a file only root can read on ${added.name}):`,
          added.token,
          `then run there: vtpm agent --name ${added.name} --control-plane URL --token-file FILE`,
        ].join('\n'),
      );
    });

  withClientOptions(host.command('disable'))
    .description('place no new vTPM on the host; those it holds keep running and starting there (admin)')
    .argument('<name>', 'the host, as vtpm hosts names it')
    .option('--reason <text>', 'why, for other admins (vtpm hosts shows it)')
    .action(async (name: string, options: { reason?: string }, command: Command) => {
      const changed = await (await client(command)).request<HostStateChanged>(
        'POST',
        `/v1/hosts/${encodeURIComponent(name)}/disable`,
        options.reason === undefined ? {} : { reason: options.reason },
      );
      emit(command, changed, () => `host ${changed.name}: ${changed.status}`);
    });

  withClientOptions(host.command('drain'))
    .description(
      'disable the host and move its vTPMs off it: stopped ones now, running ones as their VMs migrate ' +
        '(run it again for those stopped since) (admin)',
    )
    .argument('<name>', 'the host, as vtpm hosts names it')
    .option('--reason <text>', 'why, for other admins (vtpm hosts shows it)')
    .action(async (name: string, options: { reason?: string }, command: Command) => {
      const drained = await (await client(command)).request<HostVacated>(
        'POST',
        `/v1/hosts/${encodeURIComponent(name)}/drain`,
        options.reason === undefined ? {} : { reason: options.reason },
      );
      emit(command, drained, () => vacatedTable(drained));
    });

  withClientOptions(host.command('enable'))
    .description('place new vTPMs on the host again; ends a drain too (admin)')
    .argument('<name>', 'the host, as vtpm hosts names it')
    .action(async (name: string, _options: unknown, command: Command) => {
      const changed = await (await client(command)).request<HostStateChanged>(
        'POST',
        `/v1/hosts/${encodeURIComponent(name)}/enable`,
      );
      emit(command, changed, () => `host ${changed.name}: ${changed.status}`);
    });

  withClientOptions(program.command('evacuate'))
    .description(
      'move every vTPM off a host that is down: each is fenced off it and stopped on another host, ready to ' +
        "start from the vault's newest generation; those the caller may not operate are named, with why",
    )
    .argument('<host>', 'the host that is down, as vtpm hosts names it')
    .option('--to <host>', 'the one host to move them to (default: the scheduler places each)')
    .action(async (name: string, options: { to?: string }, command: Command) => {
      const evacuation = await (await client(command)).request<HostVacated>(
        'POST',
        `/v1/hosts/${encodeURIComponent(name)}/evacuate`,
        options.to === undefined ? {} : { to: options.to },
      );
      emit(command, evacuation, () => vacatedTable(evacuation));
    });

  withDataDir(program.command('agent'), { caFile: true })
    .description("run this host's agent for a control plane on another host (register it first: vtpm host add)")
    .requiredOption('--control-plane <url>', "the control plane's URL, https://HOST:7390 (http only on loopback)")
    .requiredOption('--token-file <path>', 'file (owner-only) with the agent token `vtpm host add` printed')
    .option('--name <name>', 'the host name registered with vtpm host add', hostname())
    .option('--listen <host:port>', 'address the agent API listens on', DEFAULT_AGENT_LISTEN)
    .option(
      '--run-dir <dir>',
      'where swtpm sockets and pid files go: the same path on every host, ' +
        'as libvirt domains name it (default <data-dir>/run)',
    )
    .option('--scratch-dir <dir>', 'memory file system for short-lived secret configuration', defaultScratchDir())
    .option('--tls-cert <pem>', 'serve the agent API over HTTPS with this certificate (chain)')
    .option('--tls-key <pem>', 'the private key of --tls-cert (must be readable by its owner only)')
    .option(
      '--swtpm-user <user>',
      'when run as root, the unprivileged user swtpm runs as (default tss; root keeps it root)',
    )
    .option('--qemu-group <group>', "the group QEMU runs in when not root (libvirt's: libvirt-qemu)")
    .option(
      '--max-vtpms <count>',
      'how many vTPMs this host may hold (default: no limit)',
      positiveInteger('--max-vtpms'),
    )
    .option('--log-level <level>', 'log level', 'info')
    .action(
      async (
        options: {
          controlPlane: string;
          tokenFile: string;
          name: string;
          listen: string;
          runDir?: string;
          scratchDir: string;
          tlsCert?: string;
          tlsKey?: string;
          swtpmUser?: string;
          qemuGroup?: string;
          maxVtpms?: number;
          logLevel: string;
        },
        command: Command,
      ) => {
        const { dataDir, caFile } = globals(command);
        if ((options.tlsCert === undefined) !== (options.tlsKey === undefined))
          throw new InvalidArgumentError('--tls-cert', 'to come with --tls-key');
        // Loaded here, not at the top: every other command would pay for loading the agent's server and pino.
        const [{ processLogger }, { startAgent }] = await Promise.all([
          import('./logger.js'),
          import('../agent/remote/agent-process.js'),
        ]);
        const logger = processLogger(options.logLevel, { service: 'vtpm-agent', host: options.name });
        const agent = await startAgent({
          name: options.name,
          dataDir,
          runDir: options.runDir ?? defaultRunDir(dataDir),
          scratchDir: options.scratchDir,
          listen: options.listen,
          controlPlane: options.controlPlane,
          tokenFile: options.tokenFile,
          caFile: caFile ?? process.env.VTPM_CA_FILE,
          tls: options.tlsCert && options.tlsKey ? { certFile: options.tlsCert, keyFile: options.tlsKey } : undefined,
          swtpmUser: options.swtpmUser,
          qemuGroup: options.qemuGroup,
          maxVtpms: options.maxVtpms,
          logger,
        });
        process.stdout.write(
          `vtpm agent: host ${options.name} listening on ${agent.url}, reporting to ${options.controlPlane}\n`,
        );
        const shutdown = () => void agent.close().then(() => process.exit(0));
        process.once('SIGTERM', shutdown);
        process.once('SIGINT', shutdown);
      },
    );

  withClientOptions(program.command('migrate'))
    .description(
      'prepare the live migration of a running vTPM to another host, ' +
        "before its VM's (libvirt's hook does this by itself)",
    )
    .argument('<vm>', 'VM UUID')
    .requiredOption('--to <host>', 'the destination host')
    .action(async (vm: string, options: { to: string }, command: Command) => {
      const prepared = await (await client(command)).request<Migration>('POST', `${vmPath(vm)}/migrate`, {
        to: options.to,
      });
      emit(
        command,
        prepared,
        () =>
          `${fields(prepared as unknown as Record<string, unknown>, ['vm', 'status', 'from', 'to', 'socket'])}\n` +
          `migrate the VM now; the vTPM follows once QEMU leaves ${prepared.from}`,
      );
    });
}
