/**
 * vtpm-manager's qemu hook among libvirt's hooks: libvirt runs
 * <hooks>/qemu and (6.5 and later) every program in <hooks>/qemu.d/, so a
 * hook that belongs to someone else is never replaced: ours goes beside it.
 * A hook is ours when it names this deployment (control plane URL and data
 * directory); another vtpm-manager deployment's is replaced only when asked,
 * and whatever is replaced is kept in <hooks>/vtpm-manager.backup/, where
 * libvirt does not look.
 */
import { randomBytes } from 'node:crypto';
import { chmod, copyFile, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { NotFoundError, StateConflictError } from '../errors.js';
import { hookOwner } from './libvirt-hook.js';

export interface Deployment {
  url: string;
  dataDir: string;
}

interface InstalledHook {
  path: string;
  script?: string | undefined;
  owner?: ReturnType<typeof hookOwner>;
}

const BACKUP_DIR = 'vtpm-manager.backup';

async function found(path: string): Promise<InstalledHook> {
  const script = await readFile(path, 'utf8').catch(() => undefined);
  return { path, script, owner: script === undefined ? undefined : hookOwner(script) };
}

const isOurs = (hook: InstalledHook, deployment: Deployment) =>
  hook.owner?.url === deployment.url && hook.owner.dataDir === deployment.dataDir;

function whose(hook: InstalledHook): string {
  return hook.owner
    ? `the hook of another vtpm-manager deployment (${hook.owner.url}, data directory ${hook.owner.dataDir})`
    : 'a hook vtpm-manager did not write';
}

/** libvirt's own hook, and the one vtpm-manager puts beside another's. */
async function installedHooks(hooksDir: string): Promise<[InstalledHook, InstalledHook]> {
  return [await found(join(hooksDir, 'qemu')), await found(join(hooksDir, 'qemu.d', 'vtpm-manager'))];
}

/** Where the hook goes: where ours already is, else libvirt's own hook if free, else qemu.d. */
function targetOf(main: InstalledHook, dropIn: InstalledHook, deployment: Deployment): InstalledHook {
  if (isOurs(dropIn, deployment)) return dropIn;
  if (main.script === undefined || isOurs(main, deployment) || main.owner) return main;
  return dropIn;
}

/**
 * Writes the hook script for `deployment` (made by `script` once the place is settled); returns where, and where the
 * script it replaced is kept. Refuses to replace a hook of someone else unless `replace`.
 */
export async function installHookScript(
  hooksDir: string,
  deployment: Deployment,
  replace: boolean,
  script: () => Promise<string>,
): Promise<{ path: string; backup?: string }> {
  const [main, dropIn] = await installedHooks(hooksDir);
  const target = targetOf(main, dropIn, deployment);
  if (target.script !== undefined && !isOurs(target, deployment) && !replace) {
    throw new StateConflictError(
      `${target.path} is ${whose(target)}; it is left as it is: ` +
        (target.owner
          ? `uninstall it there (vtpm libvirt uninstall-hook --url ${target.owner.url} ` +
            `--data-dir ${target.owner.dataDir}), or pass --replace (it is kept in ${join(hooksDir, BACKUP_DIR)})`
          : `move it aside, or pass --replace (it is kept in ${join(hooksDir, BACKUP_DIR)})`),
      { hook: target.path },
    );
  }
  let backup: string | undefined;
  if (target.script !== undefined) {
    await mkdir(join(hooksDir, BACKUP_DIR), { recursive: true, mode: 0o700 });
    backup = join(hooksDir, BACKUP_DIR, target === main ? 'qemu' : 'qemu.d-vtpm-manager');
    // Not executable: a backup is kept, never run.
    await copyFile(target.path, backup);
    await chmod(backup, 0o600);
  }
  await mkdir(join(target.path, '..'), { recursive: true, mode: 0o755 });
  // libvirtd may run the hook at any moment: it sees the old script or the new one, executable either way.
  const temporary = `${target.path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  await writeFile(temporary, await script(), { mode: 0o755, flag: 'wx' });
  await chmod(temporary, 0o755);
  await rename(temporary, target.path);
  return backup === undefined ? { path: target.path } : { path: target.path, backup };
}

/** Removes this deployment's hooks and nothing else; returns what it removed and the token files they named. */
export async function uninstallHookScripts(
  hooksDir: string,
  deployment: Deployment,
): Promise<{ removed: string[]; tokenFiles: string[]; leftAlone: string[] }> {
  const hooks = await installedHooks(hooksDir);
  const ours = hooks.filter((hook) => isOurs(hook, deployment));
  const leftAlone = hooks.filter((hook) => hook.script !== undefined && !isOurs(hook, deployment));
  if (ours.length === 0) {
    const others = leftAlone.map((hook) => `${hook.path} is ${whose(hook)}`).join('; ');
    throw new NotFoundError(
      `vtpm-manager hook of ${deployment.url} (data directory ${deployment.dataDir}) in`,
      others ? `${hooksDir} (${others}: left alone)` : hooksDir,
    );
  }
  for (const hook of ours) await rm(hook.path, { force: true });
  return {
    removed: ours.map((hook) => hook.path),
    tokenFiles: ours.flatMap((hook) => (hook.owner?.tokenFile ? [hook.owner.tokenFile] : [])),
    leftAlone: leftAlone.map((hook) => hook.path),
  };
}
