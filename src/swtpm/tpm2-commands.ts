/**
 * The few raw TPM 2.0 commands vtpm-manager sends itself (reading EK
 * certificates out of an adopted TPM's NV memory, writing a claimed pooled
 * TPM's new ones) and that its benchmarks send, built and parsed by hand: a
 * TSS would be a large dependency for this.
 */
import { EmulatorError } from '../errors.js';
import type { EkCertificate } from './manufacture.js';

const TPM_ST_NO_SESSIONS = 0x8001;
const TPM_ST_SESSIONS = 0x8002;
const TPM_RH_OWNER = 0x4000_0001;
const TPM_RH_PLATFORM = 0x4000_000c;
const TPM_SU_CLEAR = 0x0000;
const TPM_RS_PW = 0x4000_0009;

/** NV indices where TCG's EK credential profile puts EK certificates, by key type as swtpm names them. */
export const EK_CERTIFICATE_INDICES: Record<string, number> = {
  rsa2048: 0x01c0_0002,
  secp256r1: 0x01c0_000a,
  secp384r1: 0x01c0_0016,
};

/** Where swtpm_setup puts the platform certificate (swtpm's own choice; TCG leaves it to the platform). */
export const PLATFORM_CERTIFICATE_INDEX = 0x01c0_8000;

/** TPMA_NV bits the TPM sets itself, which a definition must not carry: WRITTEN, WRITELOCKED, READLOCKED. */
const NV_RUNTIME_ATTRIBUTES = 0x2000_0000 | 0x0000_0800 | 0x0008_0000;

/** The largest NV_Write chunk swtpm_setup sends, which libtpms accepts (MAX_NV_BUFFER_SIZE 1024). */
const NV_WRITE_CHUNK = 1024;

/** The largest NV_Read chunk any TPM must accept (MAX_NV_BUFFER_SIZE is at least 512 in practice). */
const NV_READ_CHUNK = 512;

function u16(value: number): Buffer {
  const buffer = Buffer.alloc(2);
  buffer.writeUInt16BE(value);
  return buffer;
}

function u32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value);
  return buffer;
}

function command(tag: number, code: number, body: Buffer): Buffer {
  return Buffer.concat([u16(tag), u32(10 + body.length), u32(code), body]);
}

/** A command with one password session carrying the empty password. */
function authorised(code: number, handles: number[], parameters: Buffer): Buffer {
  const session = Buffer.concat([u32(TPM_RS_PW), u16(0), Buffer.from([0]), u16(0)]);
  return command(TPM_ST_SESSIONS, code, Buffer.concat([...handles.map(u32), u32(session.length), session, parameters]));
}

export const tpm2 = {
  startupClear: command(TPM_ST_NO_SESSIONS, 0x144, u16(0)),
  /** TPM2_Shutdown(CLEAR): an orderly power-down, as the firmware's would be. */
  shutdownClear: command(TPM_ST_NO_SESSIONS, 0x145, u16(TPM_SU_CLEAR)),
  getRandom16: command(TPM_ST_NO_SESSIONS, 0x17b, u16(16)),
  nvReadPublic: (index: number) => command(TPM_ST_NO_SESSIONS, 0x169, u32(index)),
  /** TPM2_NV_Read authorised by the owner with the empty password (EK certificates allow OWNERREAD). */
  nvRead: (index: number, size: number, offset: number) =>
    authorised(0x14e, [TPM_RH_OWNER, index], Buffer.concat([u16(size), u16(offset)])),
  /**
   * TPM2_NV_DefineSpace of an ordinary index of `size` bytes,
   * owner-authorised, readable and writable by owner and index auth.
   */
  nvDefineSpace(index: number, size: number): Buffer {
    const publicArea = Buffer.concat([u32(index), u16(0x000b), u32(0x0006_0006), u16(0), u16(size)]);
    return authorised(0x12a, [TPM_RH_OWNER], Buffer.concat([u16(0), u16(publicArea.length), publicArea]));
  },
  /** TPM2_NV_Write of `data` at offset 0: changes the TPM's persistent state. */
  nvWrite: (index: number, data: Buffer) =>
    authorised(0x137, [TPM_RH_OWNER, index], Buffer.concat([u16(data.length), data, u16(0)])),
  /** TPM2_NV_UndefineSpace of an index the platform created (EK and platform certificates). */
  nvUndefinePlatformSpace: (index: number) => authorised(0x122, [TPM_RH_PLATFORM, index], Buffer.alloc(0)),
  /** TPM2_NV_DefineSpace by the platform, with an empty auth value. */
  nvDefinePlatformSpace(definition: NvDefinition): Buffer {
    const publicArea = Buffer.concat([
      u32(definition.index),
      u16(definition.nameAlg),
      u32(definition.attributes),
      u16(definition.authPolicy.length),
      definition.authPolicy,
      u16(definition.size),
    ]);
    return authorised(0x12a, [TPM_RH_PLATFORM], Buffer.concat([u16(0), u16(publicArea.length), publicArea]));
  },
  /** TPM2_NV_Write by the platform of `data` at `offset`. */
  nvWritePlatform: (index: number, data: Buffer, offset: number) =>
    authorised(0x137, [TPM_RH_PLATFORM, index], Buffer.concat([u16(data.length), data, u16(offset)])),
};

/** What TPM2_NV_DefineSpace takes, as TPM2_NV_ReadPublic gives it back. */
export interface NvDefinition {
  index: number;
  nameAlg: number;
  attributes: number;
  authPolicy: Buffer;
  size: number;
}

export function responseCode(response: Buffer): number {
  return response.readUInt32BE(6);
}

/** A TPM2_NV_ReadPublic response's TPM2B_NV_PUBLIC: size, index, nameAlg, attributes, authPolicy, dataSize. */
function nvPublic(readPublicResponse: Buffer): NvDefinition {
  const at = 10 + 2;
  const policySize = readPublicResponse.readUInt16BE(at + 10);
  return {
    index: readPublicResponse.readUInt32BE(at),
    nameAlg: readPublicResponse.readUInt16BE(at + 4),
    attributes: readPublicResponse.readUInt32BE(at + 6),
    authPolicy: Buffer.from(readPublicResponse.subarray(at + 12, at + 12 + policySize)),
    size: readPublicResponse.readUInt16BE(at + 12 + policySize),
  };
}

/** The data of a TPM2_NV_Read response: header, parameterSize, then a TPM2B_MAX_NV_BUFFER. */
function nvReadData(readResponse: Buffer): Buffer {
  const size = readResponse.readUInt16BE(14);
  return readResponse.subarray(16, 16 + size);
}

export type SendCommand = (command: Buffer) => Promise<Buffer>;

/** Sends a command whose failure is the emulator's: any response code but success is an error naming it. */
export async function expectSuccess(send: SendCommand, name: string, command: Buffer): Promise<Buffer> {
  const response = await send(command);
  if (responseCode(response) !== 0)
    throw new EmulatorError(`${name} answered 0x${responseCode(response).toString(16)}`);
  return response;
}

/** How an NV index is defined, or undefined when the TPM has no such index. */
export async function nvDefinition(send: SendCommand, index: number): Promise<NvDefinition | undefined> {
  const description = await send(tpm2.nvReadPublic(index));
  return responseCode(description) === 0 ? nvPublic(description) : undefined;
}

/** Reads a whole NV index, or undefined when the TPM has no such index. */
export async function readNvIndex(send: SendCommand, index: number): Promise<Buffer | undefined> {
  const definition = await nvDefinition(send, index);
  if (!definition) return undefined;
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < definition.size; offset += NV_READ_CHUNK) {
    const length = Math.min(NV_READ_CHUNK, definition.size - offset);
    const response = await expectSuccess(
      send,
      `TPM2_NV_Read of 0x${index.toString(16)}`,
      tpm2.nvRead(index, length, offset),
    );
    chunks.push(nvReadData(response));
  }
  return Buffer.concat(chunks);
}

/** The EK certificates in their TCG-defined NV indices, by key type, as a guest reads them. */
export async function readEkCertificatesFrom(send: SendCommand): Promise<EkCertificate[]> {
  const certificates: EkCertificate[] = [];
  for (const [keyType, index] of Object.entries(EK_CERTIFICATE_INDICES)) {
    const der = await readNvIndex(send, index);
    if (der) certificates.push({ keyType, der });
  }
  return certificates;
}

/**
 * Replaces what a platform-created index holds with `data`: the index is defined anew, as it was but for its
 * size, since a certificate's length changes with what it names; the platform hierarchy is open on a TPM no
 * firmware has run on, as when swtpm_setup wrote the index.
 */
export async function rewritePlatformIndex(send: SendCommand, definition: NvDefinition, data: Buffer): Promise<void> {
  const name = `0x${definition.index.toString(16)}`;
  await expectSuccess(send, `TPM2_NV_UndefineSpace of ${name}`, tpm2.nvUndefinePlatformSpace(definition.index));
  await expectSuccess(
    send,
    `TPM2_NV_DefineSpace of ${name}`,
    tpm2.nvDefinePlatformSpace({
      ...definition,
      attributes: definition.attributes & ~NV_RUNTIME_ATTRIBUTES,
      size: data.length,
    }),
  );
  for (let offset = 0; offset < data.length; offset += NV_WRITE_CHUNK) {
    const chunk = data.subarray(offset, offset + NV_WRITE_CHUNK);
    await expectSuccess(send, `TPM2_NV_Write of ${name}`, tpm2.nvWritePlatform(definition.index, chunk, offset));
  }
}
