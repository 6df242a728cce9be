/**
 * `vtpm libvirt ...`: run on a libvirt host. install-hook plugs vtpm-manager
 * into libvirtd's domain lifecycle; attach gives a domain a vtpm-manager TPM;
 * adopt takes over the TPM libvirt's own emulator backend created.
 */
import { chmod, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Option, type Command } from 'commander';
import type { Attachment, VtpmView } from '../api/vtpms.js';
import { HostSetupError, NotFoundError, StateConflictError } from '../errors.js';
import { parseDomain, withTpmElement, type Domain } from '../hypervisor/libvirt-domain.js';
import { HOOK_MARKER, HOOK_TIMEOUT_MS, hookScript } from '../hypervisor/libvirt-hook.js';
import { DEFAULT_LIBVIRT_URI, Virsh } from '../hypervisor/virsh.js';
import { TPM_MODELS, TPM_VERSIONS } from '../tpm-spec/tpm-spec.js';
import { stateFileName } from '../swtpm/state-file.js';
import { RemoteError, type ApiClient } from '../api/client.js';
import { withWiped } from '../keys/wiped.js';
import { client, emit, globals, vmPath, withClientOptions } from './context.js';
import { defaultRunDir } from './defaults.js';
import { readOwnerOnlyFile } from '../keys/files.js';

const DEFAULT_HOOKS_DIR = '/etc/libvirt/hooks';
const DEFAULT_SWTPM_DIR = '/var/lib/libvirt/swtpm';
const HOOK_ENTRY = fileURLToPath(new URL('./libvirt-hook.js', import.meta.url));

const connectOption = () => new Option('--connect <uri>', 'libvirt connection URI').default(DEFAULT_LIBVIRT_URI);

/** libvirt's own hook if it is free or already ours; otherwise one beside other hooks in qemu.d (libvirt 6.5+). */
async function hookPath(hooksDir: string): Promise<string> {
  const main = join(hooksDir, 'qemu');
  const existing = await readFile(main, 'utf8').catch(() => undefined);
  return existing === undefined || existing.includes(HOOK_MARKER) ? main : join(hooksDir, 'qemu.d', 'vtpm-manager');
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

export function registerLibvirtCommands(program: Command): void {
  const libvirt = program.command('libvirt').description('use vtpm-manager from libvirt: hook, attach, adopt');

  withClientOptions(libvirt.command('install-hook'), { ownTokenFile: true })
    .description(
      "install libvirt's qemu hook, which starts a domain's vTPM before QEMU and stops it after " +
        '(restart libvirtd afterwards)',
    )
    .option('--hooks-dir <dir>', "libvirt's hooks directory", DEFAULT_HOOKS_DIR)
    .option('--host <name>', "this host's name as vtpm-manager knows it (vtpm hosts)", hostname())
    .option('--run-dir <dir>', "where this host's agent puts vTPM sockets (default <data-dir>/run)")
    .option(
      '--token-file <path>',
      "on a host other than the control plane's: a file (owner-only) with the API token the hook uses " +
        '(default: <data-dir>/admin.token)',
    )
    .action(
      async (options: { hooksDir: string; host: string; runDir?: string; tokenFile?: string }, command: Command) => {
        const { url, dataDir, caFile } = globals(command);
        // Refused now, not at the first `virsh start`: the hook reads the token only from an owner-only file.
        if (options.tokenFile) await readOwnerOnlyFile(options.tokenFile, '--token-file', "the hook's API token");
        const path = await hookPath(options.hooksDir);
        await mkdir(dirname(path), { recursive: true, mode: 0o755 });
        await writeFile(
          path,
          hookScript({
            node: process.execPath,
            entry: HOOK_ENTRY,
            url,
            dataDir,
            socketDir: resolve(options.runDir ?? defaultRunDir(dataDir)),
            host: options.host,
            timeoutMs: HOOK_TIMEOUT_MS,
            caFile: caFile ?? process.env.VTPM_CA_FILE,
            tokenFile: options.tokenFile,
          }),
          { mode: 0o755 },
        );
        await chmod(path, 0o755);
        emit(
          command,
          { hook: path },
          () =>
            `installed ${path}\nlibvirtd looks for hooks when it starts: ` +
            'restart it (systemctl restart libvirtd) for the hook to take effect',
        );
      },
    );

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
