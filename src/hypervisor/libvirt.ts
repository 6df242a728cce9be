/**
 * The libvirt <tpm> element for a vTPM that vtpm-manager runs: the external
 * backend (libvirt 9.0+), where libvirt only connects QEMU to our socket.
 */
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';

export const escapeXmlAttribute = (value: string): string =>
  value
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll("'", '&apos;')
    .replaceAll('"', '&quot;');

export function libvirtTpmXml(spec: TpmSpec, socketPath: string): string {
  return [
    `<tpm model='${spec.model}'>`,
    `  <backend type='external'>`,
    `    <source type='unix' mode='connect' path='${escapeXmlAttribute(socketPath)}'/>`,
    `  </backend>`,
    `</tpm>`,
  ].join('\n');
}
