/**
 * UEFI firmware from Debian's ovmf package: the code image (read-only) and a
 * per-VM variable store made from a template. With secure boot, the code
 * image that enforces it (it needs SMM) and the template with Microsoft's
 * keys enrolled, as Windows 11 and shim-signed Linux expect.
 */
import { escapeOptionValue } from './qemu.js';
import { escapeXmlAttribute } from './libvirt.js';
import type { Firmware } from '../tpm-spec/firmware.js';

const OVMF_DIR = '/usr/share/OVMF';

function ovmfCode(secureBoot: boolean): string {
  return `${OVMF_DIR}/${secureBoot ? 'OVMF_CODE_4M.secboot.fd' : 'OVMF_CODE_4M.fd'}`;
}

export function ovmfVarsTemplate(secureBoot: boolean): string {
  return `${OVMF_DIR}/${secureBoot ? 'OVMF_VARS_4M.ms.fd' : 'OVMF_VARS_4M.fd'}`;
}

export function qemuFirmwareArgs(firmware: Firmware, nvramPath: string): string[] {
  if (firmware.type !== 'uefi') return [];
  return [
    ...(firmware.secureBoot ? ['-machine', 'smm=on', '-global', 'driver=cfi.pflash01,property=secure,value=on'] : []),
    '-drive',
    `if=pflash,format=raw,unit=0,readonly=on,file=${escapeOptionValue(ovmfCode(firmware.secureBoot))}`,
    '-drive',
    `if=pflash,format=raw,unit=1,file=${escapeOptionValue(nvramPath)}`,
  ];
}

/** The <loader> and <nvram> elements for the domain's <os> (and SMM, which secure boot needs, for <features>). */
export function libvirtFirmwareXml(firmware: Firmware, nvramPath: string): string | null {
  if (firmware.type !== 'uefi') return null;
  return [
    `<loader readonly='yes' secure='${firmware.secureBoot ? 'yes' : 'no'}' type='pflash'>` +
      `${escapeXmlAttribute(ovmfCode(firmware.secureBoot))}</loader>`,
    `<nvram>${escapeXmlAttribute(nvramPath)}</nvram>`,
    ...(firmware.secureBoot ? ["<!-- in <features>: --><smm state='on'/>"] : []),
  ].join('\n');
}
