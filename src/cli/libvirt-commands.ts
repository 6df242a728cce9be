/**
 * `vtpm libvirt ...`: run on a libvirt host. attach gives a domain a
 * vtpm-manager TPM; check lists what libvirt and vtpm-manager disagree on;
 * adopt takes over the TPM libvirt's own emulator backend created. The hook's
 * install and uninstall are in libvirt-hook-commands.ts.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { Option, type Command } from 'commander';
import type { Attachment, VtpmList, VtpmView } from '../api/vtpms.js';
import { HostSetupError, NotFoundError, SpecConflictError, StateConflictError } from '../errors.js';
import { parseDomain, withTpmElement, type Domain } from '../hypervisor/libvirt-domain.js';
import { disagreements } from '../hypervisor/libvirt-check.js';
import { DEFAULT_LIBVIRT_URI, Virsh } from '../hypervisor/virsh.js';
import { TPM_MODELS, TPM_VERSIONS } from '../tpm-spec/tpm-spec.js';
import { stateFileName } from '../swtpm/state-file.js';
import { RemoteError, type ApiClient } from '../api/client.js';
import { withWiped } from '../keys/wiped.js';
import { confirm } from './confirm.js';
import { client, emit, globals, vmPath, withClientOptions } from './context.js';
import { defaultRunDir } from './defaults.js';
import { registerLibvirtHookCommands } from './libvirt-hook-commands.js';

const DEFAULT_SWTPM_DIR = '/var/lib/libvirt/swtpm';

const connectOption = () => new Option('--connect <uri>', 'libvirt connection URI').default(DEFAULT_LIBVIRT_URI);

async function existingVtpm(api: ApiClient, vm: string): Promise<VtpmView | undefined> {
  try {
    return await api.request<VtpmView>('GET', vmPath(vm));
  } catch (error) {
    if (error instanceof RemoteError && error.code === 'not_found') return undefined;
    throw error;
  }
}

async function requireShutOff(virsh: Virsh, domain: Domain, action: string): Promise<void> {
  const state = await virsh.domainState(domain.name);
  if (state !== 'shut off')
    throw new StateConflictError(`libvirt domain ${domain.name} is ${state}; shut it down before you ${action}`, {
      domain: domain.name,
      state,
    });
}

/** Where libvirt's emulator backend keeps a domain's TPM state, and which version it is. */
async function libvirtState(swtpmDir: string, domain: Domain): Promise<{ version: string; file: string }> {
  const dir = join(swtpmDir, domain.uuid);
  const entries = await readdir(dir).catch(() => [] as string[]);
  const version = entries.includes('tpm2') ? '2.0' : entries.includes('tpm1.2') ? '1.2' : undefined;
  if (!version) {
    throw new NotFoundError(
      'TPM state of libvirt domain',
      `${domain.name} (nothing in ${dir}: has the domain ever started with its TPM?)`,
    );
  }
  return {
    version,
    file: join(dir, version === '2.0' ? 'tpm2' : 'tpm1.2', stateFileName({ version, model: 'tpm-tis' })),
  };
}

/** An existing vTPM is used as it is: a different version or model asked for is refused, not ignored. */
function requireSameSpec(domain: string, existing: VtpmView, asked: { version?: string; model?: string }): void {
  for (const field of ['version', 'model'] as const) {
    const wanted = asked[field];
    if (wanted !== undefined && wanted !== existing[field])
      throw new SpecConflictError(
        `libvirt domain ${domain} already has vTPM ${existing.vm} with TPM ${field} ${existing[field]}, ` +
          `not the ${wanted} asked for: attach it without --${field}, or delete the vTPM ` +
          `(vtpm delete ${existing.vm}: its state is lost) and attach again`,
        [
          { source: `vTPM ${existing.vm}`, key: field, value: existing[field] },
          { source: `--${field}`, key: field, value: wanted },
        ],
      );
  }
}

export function registerLibvirtCommands(program: Command): void {
  const libvirt = program.command('libvirt').description('use vtpm-manager from libvirt: hook, attach, adopt');

  registerLibvirtHookCommands(libvirt);

  withClientOptions(libvirt.command('attach'))
    .description(
      'give a libvirt domain a vtpm-manager TPM: ' +
        "creates the vTPM for the domain's UUID and adds the <tpm> element to its definition",
    )
    .argument('<domain>', 'domain name or UUID')
    .addOption(new Option('--version <version>', 'TPM version').choices([...TPM_VERSIONS]))
    .addOption(new Option('--model <model>', 'TPM model').choices([...TPM_MODELS]))
    .option(
      '--replace',
      "replace the domain's current TPM (its state is not carried over: `vtpm libvirt adopt` keeps it)",
    )
    .addOption(connectOption())
    .action(
      async (
        name: string,
        options: { version?: string; model?: string; replace?: boolean; connect: string },
        command: Command,
      ) => {
        const virsh = new Virsh(options.connect);
        const xml = await virsh.domainXml(name);
        const domain = parseDomain(xml);
        const api = await client(command);
        const existing = await existingVtpm(api, domain.uuid);
        if (domain.tpm && !options.replace && !(existing && domain.tpm.backend === 'external')) {
          throw new StateConflictError(
            `libvirt domain ${domain.name} already has a TPM (${domain.tpm.backend} backend); ` +
              'pass --replace to swap it for a vtpm-manager one, ' +
              `or run \`vtpm libvirt adopt ${domain.name}\` to keep its state`,
            { domain: domain.name },
          );
        }
        if (existing) requireSameSpec(domain.name, existing, options);
        const vtpm =
          existing ??
          (await api.request<VtpmView>('POST', '/v1/vtpms', {
            vm: domain.uuid,
            ...(options.version && { version: options.version }),
            ...(options.model && { model: options.model }),
          }));
        const attachment = await api.request<Attachment>('GET', `${vmPath(domain.uuid)}/attachment`);
        await virsh.define(withTpmElement(xml, attachment.libvirt_xml));
        emit(
          command,
          { domain: domain.name, vtpm },
          () =>
            `libvirt domain ${domain.name} now uses vTPM ${vtpm.vm} ` +
            `(TPM ${vtpm.version}, ${vtpm.model})${existing ? ', which already existed' : ''}`,
        );
      },
    );

  withClientOptions(libvirt.command('check'))
    .description(
      "list libvirt domains whose vTPM is missing, and this host's vTPMs whose domain is gone " +
        '(--prune deletes those vTPMs)',
    )
    .option('--host <name>', "this host's name as vtpm-manager knows it (vtpm hosts)", hostname())
    .option('--run-dir <dir>', "where this host's agent puts vTPM sockets (default <data-dir>/run)")
    .option('--prune', 'delete the stopped vTPMs whose domain is gone: their state is crypto-erased, for good')
    .option('--yes', 'with --prune: do not ask (scripts); without a terminal --prune needs it')
    .addOption(connectOption())
    .action(
      async (
        options: { host: string; runDir?: string; prune?: boolean; yes?: boolean; connect: string },
        command: Command,
      ) => {
        const { dataDir } = globals(command);
        const api = await client(command);
        const { vtpms } = await api.request<VtpmList>('GET', '/v1/vtpms');
        const found = disagreements(await new Virsh(options.connect).domains(), vtpms, {
          name: options.host,
          socketDir: resolve(options.runDir ?? defaultRunDir(dataDir)),
        });
        // A running vTPM may serve a QEMU started without libvirt: never pruned.
        const prunable = found.missingDomain.filter((v) => v.status === 'stopped');
        const pruned: string[] = [];
        if (options.prune && prunable.length > 0) {
          await confirm(
            `delete ${prunable.length} vTPM(s) whose libvirt domain is gone ` +
              `(${prunable.map((v) => v.vm).join(', ')})? Their state is crypto-erased and cannot be recovered.`,
            options.yes === true,
          );
          for (const vtpm of prunable) {
            await api.request('DELETE', vmPath(vtpm.vm));
            pruned.push(vtpm.vm);
          }
        }
        emit(
          command,
          {
            domains_without_vtpm: found.missingVtpm.map((d) => ({ domain: d.name, vm: d.uuid })),
            vtpms_without_domain: found.missingDomain.map((v) => ({ vm: v.vm, status: v.status })),
            pruned,
          },
          () =>
            [
              ...found.missingVtpm.map(
                (d) => `libvirt domain ${d.name} uses vTPM ${d.uuid}, which does not exist: its next start fails`,
              ),
              ...found.missingDomain.map(
                (v) =>
                  `vTPM ${v.vm} (${v.status}) has no libvirt domain on ${options.host}` +
                  (pruned.includes(v.vm) ? ': deleted' : v.status === 'stopped' ? '' : ': in use, not pruned'),
              ),
              ...(found.missingVtpm.length + found.missingDomain.length === 0
                ? [`libvirt and vtpm-manager agree on ${options.host}`]
                : []),
            ].join('\n'),
        );
      },
    );

  withClientOptions(libvirt.command('adopt'))
    .description(
      "take over the TPM libvirt's emulator backend created for a shut-off domain: " +
        'same EK, NV contents and PCR banks, now in vtpm-manager',
    )
    .argument('<domain>', 'domain name or UUID')
    .option('--swtpm-dir <dir>', 'where libvirt keeps its swtpm states', DEFAULT_SWTPM_DIR)
    .option('--remove-source', "erase libvirt's copy of the TPM state once the domain uses vtpm-manager")
    .addOption(connectOption())
    .action(
      async (
        name: string,
        options: { swtpmDir: string; removeSource?: boolean; connect: string },
        command: Command,
      ) => {
        const virsh = new Virsh(options.connect);
        const xml = await virsh.domainXml(name);
        const domain = parseDomain(xml);
        if (domain.tpm?.backend !== 'emulator') {
          const found = domain.tpm ? `a TPM with the ${domain.tpm.backend} backend` : 'no TPM';
          throw new StateConflictError(
            `libvirt domain ${domain.name} has ${found}; only a TPM of libvirt's emulator backend can be adopted`,
            { domain: domain.name },
          );
        }
        await requireShutOff(virsh, domain, 'adopting its TPM');
        const source = await libvirtState(options.swtpmDir, domain);
        if (domain.tpm.version && domain.tpm.version !== source.version) {
          throw new HostSetupError(
            `libvirt domain ${domain.name} declares TPM ${domain.tpm.version} ` +
              `but its state directory holds TPM ${source.version}`,
            { domain: domain.name },
          );
        }
        const state = await readFile(source.file);
        const secret = domain.tpm.encryptionSecret ? await virsh.secretValue(domain.tpm.encryptionSecret) : undefined;
        const api = await client(command);
        const model = domain.tpm.model;
        const adopt = (sourceSecret?: Buffer) =>
          api.request<VtpmView>('POST', '/v1/vtpms/adopt', {
            vm: domain.uuid,
            version: source.version,
            model,
            source: `libvirt:${domain.name}`,
            state: state.toString('base64'),
            ...(sourceSecret && { source_secret: sourceSecret.toString('base64') }),
          });
        const vtpm = secret ? await withWiped(secret, adopt) : await adopt();
        const attachment = await api.request<Attachment>('GET', `${vmPath(domain.uuid)}/attachment`);
        try {
          await virsh.define(withTpmElement(xml, attachment.libvirt_xml));
        } catch (error) {
          // The domain still uses libvirt's TPM: leave nothing behind, so that adopting again starts clean.
          await api.request('DELETE', vmPath(domain.uuid)).catch(() => undefined);
          throw error;
        }
        if (options.removeSource) await rm(join(options.swtpmDir, domain.uuid), { recursive: true, force: true });
        emit(
          command,
          {
            domain: domain.name,
            vtpm,
            source_removed: options.removeSource === true,
            source: join(options.swtpmDir, domain.uuid),
          },
          () =>
            [
              `libvirt domain ${domain.name} now uses vTPM ${vtpm.vm} (TPM ${vtpm.version}, ${vtpm.model}), ` +
                "adopted from libvirt's emulator backend",
              options.removeSource
                ? `libvirt's copy of the state (${join(options.swtpmDir, domain.uuid)}) is erased`
                : `libvirt's copy of the state is still in ${join(options.swtpmDir, domain.uuid)}` +
                  `${secret ? '' : ' (not encrypted)'}; ` +
                  'erase it once you are satisfied, or adopt with --remove-source',
            ].join('\n'),
        );
      },
    );
}
