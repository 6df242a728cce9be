/** The QEMU arguments that attach a guest to a vTPM's socket. */
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';

/** QEMU's option syntax uses ',' as separator; a literal comma in a value is written twice. */
export const escapeOptionValue = (value: string): string => value.replaceAll(',', ',,');

export function qemuTpmArgs(spec: TpmSpec, socketPath: string): string[] {
  return [
    '-chardev',
    `socket,id=chrtpm,path=${escapeOptionValue(socketPath)}`,
    '-tpmdev',
    'emulator,id=tpm0,chardev=chrtpm',
    '-device',
    `${spec.model},tpmdev=tpm0`,
  ];
}
