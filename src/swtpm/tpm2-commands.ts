/**
 * The few raw TPM 2.0 commands vtpm-manager sends itself (reading EK
 * certificates out of an adopted TPM's NV memory) and that its benchmarks
 * send, built and parsed by hand: a TSS would be a large dependency for this.
 */
import { EmulatorError } from '../errors.js';

const TPM_ST_NO_SESSIONS = 0x8001;
const TPM_ST_SESSIONS = 0x8002;
const TPM_RH_OWNER = 0x4000_0001;
const TPM_RS_PW = 0x4000_0009;

/** NV indices where TCG's EK credential profile puts EK certificates, by key type as swtpm names them. */
export const EK_CERTIFICATE_INDICES: Record<string, number> = {
  rsa2048: 0x01c0_0002,
  secp256r1: 0x01c0_000a,
  secp384r1: 0x01c0_0016,
};

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
};

export function responseCode(response: Buffer): number {
  return response.readUInt32BE(6);
}

/**
 * The data size from a TPM2_NV_ReadPublic response (TPM2B_NV_PUBLIC:
 * size, index, nameAlg, attributes, authPolicy, dataSize).
 */
function nvDataSize(readPublicResponse: Buffer): number {
  const policySize = readPublicResponse.readUInt16BE(10 + 2 + 4 + 2 + 4);
  return readPublicResponse.readUInt16BE(10 + 2 + 4 + 2 + 4 + 2 + policySize);
}

/** The data of a TPM2_NV_Read response: header, parameterSize, then a TPM2B_MAX_NV_BUFFER. */
function nvReadData(readResponse: Buffer): Buffer {
  const size = readResponse.readUInt16BE(14);
  return readResponse.subarray(16, 16 + size);
}

export type SendCommand = (command: Buffer) => Promise<Buffer>;

/** Reads a whole NV index, or undefined when the TPM has no such index. */
export async function readNvIndex(send: SendCommand, index: number): Promise<Buffer | undefined> {
  const description = await send(tpm2.nvReadPublic(index));
  if (responseCode(description) !== 0) return undefined;
  const size = nvDataSize(description);
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < size; offset += NV_READ_CHUNK) {
    const response = await send(tpm2.nvRead(index, Math.min(NV_READ_CHUNK, size - offset), offset));
    if (responseCode(response) !== 0)
      throw new EmulatorError(
        `TPM2_NV_Read of 0x${index.toString(16)} answered 0x${responseCode(response).toString(16)}`,
      );
    chunks.push(nvReadData(response));
  }
  return Buffer.concat(chunks);
}
