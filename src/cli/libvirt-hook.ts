#!/usr/bin/env node
/**
 * Entry point of libvirt's qemu hook (see hypervisor/libvirt-hook.ts), the
 * package's `vtpm-libvirt-hook` program. Kept apart from the `vtpm` command
 * so that it loads only what it needs: libvirtd waits for it.
 *
 * Called as: qemu DOMAIN OPERATION SUB-OPERATION EXTRA, domain XML on stdin.
 */
import { readFileSync } from 'node:fs';
import { VtpmError } from '../errors.js';
import { parseDomain } from '../hypervisor/libvirt-domain.js';
import { HOOK_TIMEOUT_MS, hookAction, hookMayAct } from '../hypervisor/libvirt-hook.js';
import { ApiClient } from '../api/client.js';
import { readOwnerOnlyFile } from '../keys/owner-only-file.js';
import { defaultDataDir, defaultRunDir, defaultUrl } from './defaults.js';

async function main(): Promise<number> {
  const [domainName = '?', operation = '', subOperation = ''] = process.argv.slice(2);
  // Read all of it, so that the writer never meets a closed pipe. Read from fd 0 directly: process.stdin would set up
  // a stream on the pipe, which costs each call; the hook script's pipe is blocking, so the read ends at its end.
  const xml = readFileSync(0, 'utf8');
  if (!hookMayAct(operation, subOperation)) return 0;
  const dataDir = defaultDataDir();
  let domain;
  try {
    domain = parseDomain(xml);
  } catch (error) {
    process.stderr.write(
      `vtpm-manager: domain ${domainName} left alone, its XML could not be read: ${message(error)}\n`,
    );
    return 0;
  }
  const action = hookAction(
    operation,
    subOperation,
    domain,
    process.env.VTPM_HOOK_SOCKET_DIR ?? defaultRunDir(dataDir),
  );
  if (!action) return 0;
  const timeoutMs = Number(process.env.VTPM_HOOK_TIMEOUT_MS) || HOOK_TIMEOUT_MS;
  const tokenFile = process.env.VTPM_TOKEN_FILE;
  // A hook of an older install has no token of its own and uses the data directory's admin token.
  const token = tokenFile
    ? (await readOwnerOnlyFile(tokenFile, 'VTPM_TOKEN_FILE', "the hook's API token")).trim()
    : undefined;
  const api = await ApiClient.connect({
    url: defaultUrl(),
    dataDir,
    timeoutMs,
    token,
    unreachableHint:
      'is `vtpm serve` running? (the hook calls the URL it was installed with: vtpm libvirt install-hook --url)',
  });
  const path = `/v1/vtpms/${encodeURIComponent(action.vm)}`;
  const what = `the vTPM of libvirt domain ${domainName} (VM ${action.vm})`;
  const scope = process.env.VTPM_HOOK_HOST ? { host: process.env.VTPM_HOOK_HOST } : undefined;
  if (action.kind === 'prepare-migration') {
    if (!scope) {
      process.stderr.write(
        `vtpm-manager: ${what} cannot follow a migration: this hook does not know its host ` +
          '(install it again with vtpm libvirt install-hook)\n',
      );
      return 1;
    }
    try {
      await api.request('POST', `${path}/migrate`, { to: scope.host });
    } catch (error) {
      process.stderr.write(
        `vtpm-manager: cannot prepare the migration of ${what} to ${scope.host}: ${message(error)}\n`,
      );
      return 1;
    }
    return 0;
  }
  if (action.kind === 'start') {
    // A retried prepare of a vTPM already running on this host succeeds: a start of a running vTPM is one.
    try {
      await api.request('POST', `${path}/start`, scope);
    } catch (error) {
      process.stderr.write(`vtpm-manager: cannot start ${what}: ${message(error)}\n`);
      return 1;
    }
    return 0;
  }
  try {
    await api.request('POST', `${path}/stop`, scope);
  } catch (error) {
    // QEMU is already gone; libvirt cannot undo a release. Say so in its log and let it finish.
    process.stderr.write(`vtpm-manager: could not confirm that ${what} stopped: ${message(error)}\n`);
  }
  return 0;
}

function message(error: unknown): string {
  return error instanceof VtpmError
    ? `${error.message} [${error.code}]`
    : error instanceof Error
      ? error.message
      : String(error);
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`vtpm-manager: libvirt hook failed: ${message(error)}\n`);
    process.exit(1);
  },
);
