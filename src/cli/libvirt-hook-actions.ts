/**
 * What `vtpm libvirt install-hook` and `uninstall-hook` do, loaded by their actions only: the hook's script,
 * its files and its token are no cost to any other command. Their definitions are in libvirt-hook-commands.ts.
 */
import { constants, existsSync } from 'node:fs';
import { access, mkdir, rm } from 'node:fs/promises';
import { delimiter, dirname, isAbsolute, join, resolve } from 'node:path';
import type { Command } from 'commander';
import { HostSetupError } from '../errors.js';
import { installHookScript, uninstallHookScripts } from '../hypervisor/hook-files.js';
import { HOOK_PROGRAM, HOOK_TIMEOUT_MS, hookScript } from '../hypervisor/libvirt-hook.js';
import { libvirtHookUser } from '../auth/policy.js';
import { RemoteError, type ApiClient } from '../api/client.js';
import { withWiped } from '../keys/wiped.js';
import { client, emit, globals } from './context.js';
import { defaultRunDir } from './defaults.js';
import { writeFileAtomically } from '../keys/files.js';
import { DEPLOYMENT_PROJECT } from '../store/repositories/secrets.js';

export interface InstallHookOptions {
  hooksDir: string;
  host: string;
  runDir?: string;
  hookTokenFile?: string;
  replace?: boolean;
}

export interface UninstallHookOptions {
  hooksDir: string;
  host: string;
}

const HOOK_TOKEN_FILE = 'libvirt-hook.token';

/**
 * A program of this package as npm installed it (a link in a directory on PATH, which an upgrade replaces),
 * so that the hook never names a path inside a checkout or a versioned package directory.
 */
async function installedProgram(name: string): Promise<string> {
  for (const dir of (process.env.PATH ?? '').split(delimiter).filter((d) => isAbsolute(d))) {
    const candidate = join(dir, name);
    if (
      await access(candidate, constants.X_OK).then(
        () => true,
        () => false,
      )
    )
      return candidate;
  }
  throw new HostSetupError(
    `${name} is not on PATH: the hook runs the installed vtpm-manager, not a checkout; ` +
      'install it first (npm install -g . in the checkout, or npm install -g vtpm-manager-VERSION.tgz)',
  );
}

/** The hook's own user (created on first use) gets a new token; those it had before are revoked once it is written. */
async function issueHookToken(api: ApiClient, host: string, tokenFile: string): Promise<void> {
  const user = libvirtHookUser(host);
  let issued: { token: string; token_id: number };
  try {
    issued = await api.request('POST', '/v1/users', {
      name: user,
      project: DEPLOYMENT_PROJECT,
      roles: ['libvirt-hook'],
    });
  } catch (error) {
    if (!(error instanceof RemoteError && error.code === 'already_exists')) throw error;
    issued = await api.request('POST', `/v1/users/${encodeURIComponent(user)}/tokens`, {});
  }
  await withWiped(Buffer.from(`${issued.token}\n`), async (token) => {
    await mkdir(dirname(tokenFile), { recursive: true, mode: 0o700 });
    await writeFileAtomically(tokenFile, token);
  });
  await revokeHookTokens(api, host, issued.token_id);
}

async function revokeHookTokens(api: ApiClient, host: string, keep?: number): Promise<void> {
  const user = libvirtHookUser(host);
  const { tokens } = await api.request<{ tokens: Array<{ id: number; revoked_at: string | null }> }>(
    'GET',
    `/v1/tokens?user=${encodeURIComponent(user)}`,
  );
  for (const token of tokens.filter((t) => t.id !== keep && t.revoked_at === null))
    await api.request('DELETE', `/v1/tokens/${token.id}`);
}

/** How to restart libvirtd here: systemd's command only where systemd runs the host. */
function restartHint(): string {
  return existsSync('/run/systemd/system')
    ? 'restart it (systemctl restart libvirtd)'
    : 'restart libvirtd (this host does not run systemd: stop the running libvirtd and start it again, ' +
        'e.g. service libvirtd restart)';
}

export async function installHook(options: InstallHookOptions, command: Command): Promise<void> {
  const { url, dataDir, caFile } = globals(command);
  const program = await installedProgram(HOOK_PROGRAM);
  const tokenFile = resolve(options.hookTokenFile ?? join(dataDir, HOOK_TOKEN_FILE));
  const settings = {
    program,
    nodeDir: dirname(process.execPath),
    url,
    dataDir: resolve(dataDir),
    socketDir: resolve(options.runDir ?? defaultRunDir(dataDir)),
    host: options.host,
    timeoutMs: HOOK_TIMEOUT_MS,
    caFile: caFile ?? process.env.VTPM_CA_FILE,
    tokenFile,
  };
  const deployment = { url, dataDir: settings.dataDir };
  // The token is issued only once the hook may be written: a refused install leaves nothing behind.
  const installed = await installHookScript(options.hooksDir, deployment, options.replace === true, async () => {
    await issueHookToken(await client(command), options.host, tokenFile);
    return hookScript(settings);
  });
  emit(command, { hook: installed.path, backup: installed.backup ?? null, token_file: tokenFile, program }, () =>
    [
      `installed ${installed.path}, which runs ${program} as ${libvirtHookUser(options.host)} ` +
        `(token in ${tokenFile})`,
      ...(installed.backup ? [`the hook it replaced is kept in ${installed.backup}`] : []),
      `libvirtd looks for hooks when it starts: ${restartHint()} for the hook to take effect`,
    ].join('\n'),
  );
}

export async function uninstallHook(options: UninstallHookOptions, command: Command): Promise<void> {
  const { url, dataDir } = globals(command);
  const removed = await uninstallHookScripts(options.hooksDir, { url, dataDir: resolve(dataDir) });
  for (const file of removed.tokenFiles) await rm(file, { force: true });
  const revoked = await revokeHookTokens(await client(command), options.host).then(
    () => undefined,
    (error: unknown) => (error instanceof Error ? error.message : String(error)),
  );
  emit(command, { removed: removed.removed, left_alone: removed.leftAlone, token_revoked: revoked === undefined }, () =>
    [
      `removed ${removed.removed.join(', ')}`,
      ...removed.leftAlone.map((path) => `left ${path} alone: it is not this deployment's`),
      revoked === undefined
        ? `revoked the tokens of ${libvirtHookUser(options.host)}`
        : `could not revoke the tokens of ${libvirtHookUser(options.host)} (${revoked}): ` +
          `vtpm token list --user ${libvirtHookUser(options.host)}, then vtpm token revoke ID`,
      `libvirtd still calls the hooks it found when it started: ${restartHint()} now`,
    ].join('\n'),
  );
}
