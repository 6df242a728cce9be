/**
 * What `vtpm libvirt attach`, `check` and `adopt` do, loaded by their actions only: virsh, the domain XML
 * parser and the check are no cost to any other command. Their definitions are in libvirt-commands.ts.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import type { Attachment, VtpmList, VtpmView } from '../api/vtpms.js';
import { HostSetupError, NotFoundError, SpecConflictError, StateConflictError } from '../errors.js';
import { parseDomain, withTpmElement, type Domain } from '../hypervisor/libvirt-domain.js';
import { disagreements } from '../hypervisor/libvirt-check.js';
import { Virsh } from '../hypervisor/virsh.js';
import { stateFileName } from '../swtpm/state-file.js';
import { RemoteError, type ApiClient } from '../api/client.js';
import { withWiped } from '../keys/wiped.js';
import { confirm } from './confirm.js';
import { client, emit, globals, vmPath } from './context.js';
import { defaultRunDir } from './defaults.js';

export interface AttachOptions {
  version?: string;
  model?: string;
  replace?: boolean;
  connect: string;
}

export interface CheckOptions {
  host: string;
  runDir?: string;
  prune?: boolean;
  yes?: boolean;
  connect: string;
}

export interface AdoptOptions {
  swtpmDir: string;
  removeSource?: boolean;
  connect: string;
}

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

export async function attach(name: string, options: AttachOptions, command: Command): Promise<void> {
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
}

export async function check(options: CheckOptions, command: Command): Promise<void> {
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
}

export async function adopt(name: string, options: AdoptOptions, command: Command): Promise<void> {
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
}
