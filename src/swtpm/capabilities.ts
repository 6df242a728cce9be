/**
 * What this host can offer, probed from the installed swtpm and QEMU, turned
 * into placement traits with OpenStack's names.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { TRAITS, type TpmModel, type TpmVersion } from '../tpm-spec/tpm-spec.js';
import { childEnvironment } from './run-program.js';

const exec = promisify(execFile);

export interface HostCapabilities {
  swtpm: { version: string | null; features: string[] };
  swtpmSetup: { features: string[] };
  qemu: { binary: string; version: string | null; tpmModels: TpmModel[] };
}

async function output(program: string, args: string[]): Promise<string | null> {
  try {
    const { stdout, stderr } = await exec(program, args, { timeout: 15_000, env: childEnvironment() });
    return stdout + stderr;
  } catch {
    return null;
  }
}

function features(json: string | null): string[] {
  if (json === null) return [];
  try {
    const parsed = JSON.parse(json) as { features?: unknown };
    return Array.isArray(parsed.features) ? parsed.features.map(String) : [];
  } catch {
    return [];
  }
}

export async function probeCapabilities(qemuBinary = 'qemu-system-x86_64'): Promise<HostCapabilities> {
  const [swtpmVersion, swtpmCaps, setupCaps, qemuVersion, qemuDevices] = await Promise.all([
    output('swtpm', ['--version']),
    output('swtpm', ['socket', '--print-capabilities']),
    output('swtpm_setup', ['--print-capabilities']),
    output(qemuBinary, ['--version']),
    output(qemuBinary, ['-device', 'help']),
  ]);
  const tpmModels = (['tpm-tis', 'tpm-crb'] as const).filter(
    (model) => qemuDevices !== null && new RegExp(`name "${model}"`).test(qemuDevices),
  );
  return {
    swtpm: { version: swtpmVersion?.match(/version ([\d.]+)/)?.[1] ?? null, features: features(swtpmCaps) },
    swtpmSetup: { features: features(setupCaps) },
    qemu: { binary: qemuBinary, version: qemuVersion?.match(/version ([\d.]+)/)?.[1] ?? null, tpmModels },
  };
}

/** A version is offered when both swtpm and swtpm_setup support it; a model when QEMU has the device. */
export function traitsOf(capabilities: HostCapabilities): string[] {
  const traits: string[] = [];
  for (const version of ['1.2', '2.0'] as TpmVersion[]) {
    const feature = `tpm-${version}`;
    if (capabilities.swtpm.features.includes(feature) && capabilities.swtpmSetup.features.includes(feature))
      traits.push(TRAITS.version[version]);
  }
  for (const model of capabilities.qemu.tpmModels) traits.push(TRAITS.model[model]);
  return traits;
}
