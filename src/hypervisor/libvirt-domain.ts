/**
 * What vtpm-manager reads from and changes in a libvirt domain definition:
 * its identity and its one <tpm> device. Reading goes through an XML parser;
 * the one change (swapping or adding the <tpm> element) is made on the text
 * libvirt itself formatted, so that everything else stays byte for byte.
 */
import { dirname } from 'node:path';
// The parser alone (xml-parser.d.ts): the package's main module loads its builder too.
import XMLParser from 'fast-xml-parser/src/xmlparser/XMLParser.js';
import { InvalidArgumentError } from '../errors.js';

interface DomainTpm {
  model: string;
  /** emulator (libvirt runs swtpm), external (someone else does), passthrough. */
  backend: string;
  /** The emulator backend's TPM version, when the XML names it. */
  version?: string | undefined;
  /** The libvirt secret the emulator backend encrypts the state with. */
  encryptionSecret?: string | undefined;
  /** The external backend's socket. */
  socket?: string | undefined;
}

export interface Domain {
  name: string;
  uuid: string;
  tpm?: DomainTpm | undefined;
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '',
  parseAttributeValue: false,
  parseTagValue: false,
  isArray: (name) => name === 'tpm',
});

type Node = Record<string, unknown>;
const text = (value: unknown): string | undefined =>
  typeof value === 'string'
    ? value
    : typeof (value as Node | undefined)?.['#text'] === 'string'
      ? ((value as Node)['#text'] as string)
      : undefined;

export function parseDomain(xml: string): Domain {
  let document: Node;
  try {
    document = parser.parse(xml) as Node;
  } catch (error) {
    throw new InvalidArgumentError('domain XML', 'a libvirt domain definition', (error as Error).message);
  }
  const domain = document.domain as Node | undefined;
  const name = text(domain?.name);
  const uuid = text(domain?.uuid)?.trim().toLowerCase();
  if (!domain || !name || !uuid)
    throw new InvalidArgumentError('domain XML', 'a libvirt domain definition with <name> and <uuid>');
  const tpms = ((domain.devices as Node | undefined)?.tpm as Node[] | undefined) ?? [];
  const tpm = tpms[0];
  if (!tpm) return { name, uuid };
  const backend = (tpm.backend as Node | undefined) ?? {};
  const source = backend.source as Node | undefined;
  const encryption = backend.encryption as Node | undefined;
  return {
    name,
    uuid,
    tpm: {
      model: String(tpm.model ?? 'tpm-tis'),
      backend: String(backend.type ?? 'passthrough'),
      version: backend.version === undefined ? undefined : String(backend.version),
      encryptionSecret: encryption?.secret === undefined ? undefined : String(encryption.secret),
      socket: source?.path === undefined ? undefined : String(source.path),
    },
  };
}

/** True when the domain's TPM is a vtpm-manager socket in `socketDir` named for the domain's UUID. */
export function usesVtpmManager(domain: Domain, socketDir: string): boolean {
  const socket = domain.tpm?.backend === 'external' ? domain.tpm.socket : undefined;
  return socket !== undefined && dirname(socket) === socketDir && socket.endsWith(`/${domain.uuid}.sock`);
}

const TPM_ELEMENT = /[ \t]*<tpm\b[^>]*?(?:\/>|>[\s\S]*?<\/tpm>)[ \t]*\n?/;

/** The domain XML with its <tpm> element replaced by `tpmXml`, or `tpmXml` added as the last device. */
export function withTpmElement(xml: string, tpmXml: string): string {
  const indent = /\n([ \t]*)<\/devices>/.exec(xml)?.[1] ?? '  ';
  const element =
    tpmXml
      .split('\n')
      .map((line) => `${indent}  ${line}`)
      .join('\n') + '\n';
  const updated = TPM_ELEMENT.test(xml)
    ? xml.replace(TPM_ELEMENT, element)
    : xml.replace(/([ \t]*)<\/devices>/, `${element}$1</devices>`);
  // The regular expression works on libvirt's own formatting; check the result the strict way.
  if (parseDomain(updated).tpm?.backend === undefined)
    throw new InvalidArgumentError('domain XML', 'a <devices> element to add the TPM to');
  return updated;
}
