/**
 * The guest's side of a fault scenario: one vTPM driven through its socket
 * as QEMU drives it (bench/tpm-load-client.ts), writing a fresh value, a
 * sequence number, to one NV index in a loop. Each write the TPM answered is
 * recorded with the time of the answer (what the guest was told) and the
 * digest of swtpm's state file right after it, so that a vault generation,
 * known by its digest, tells which writes it holds.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { readNvIndex, responseCode, tpm2 } from '../../src/swtpm/tpm2-commands.js';
import { TpmChannel } from '../../bench/tpm-load-client.js';

const NV_INDEX = 0x0150_0fa1;
const NV_SIZE = 8;
const TPM_RC_NV_DEFINED = 0x14c;
/** A write the TPM does not answer within this is a hung vTPM, not a slow one. */
const WRITE_TIMEOUT_MS = 15_000;

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the TPM did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export interface AnsweredWrite {
  seq: number;
  /** Date.now() when the TPM's answer arrived. */
  at: number;
}

const digest = (data: Buffer) => createHash('sha256').update(data).digest('hex');

const encode = (seq: number) => {
  const value = Buffer.alloc(NV_SIZE);
  value.writeBigUInt64BE(BigInt(seq));
  return value;
};

/** Opens the vTPM's socket as QEMU does, reads the NV index: the sequence number it holds, 0 when undefined. */
export async function readValue(socket: string): Promise<{ channel: TpmChannel; seq: number }> {
  const channel = await TpmChannel.open(socket);
  try {
    const data = await readNvIndex(channel.send, NV_INDEX);
    return { channel, seq: data === undefined ? 0 : Number(data.readBigUInt64BE(0)) };
  } catch (error) {
    channel.close();
    throw error;
  }
}

export class VtpmLoad {
  /** Every write the TPM answered, over every launch, in order. */
  readonly answered: AnsweredWrite[] = [];
  /** State file digest -> the sequence number the state holds. */
  readonly valueOfDigest = new Map<string, number>();
  /** The write sent last, answered or not (the one in flight when swtpm died may have reached its state). */
  lastSent = 0;
  private channel: TpmChannel | undefined;
  /** The state directory of the host it runs on now. */
  private stateDir = '';
  private loop: Promise<void> | undefined;
  private stopping = false;
  /** Why the loop ended, when it was not asked to. */
  ended: unknown;

  constructor(
    readonly vm: string,
    private readonly pauseMs: () => number,
  ) {}

  get lastAnswered(): AnsweredWrite | undefined {
    return this.answered.at(-1);
  }

  get running(): boolean {
    return this.loop !== undefined && this.ended === undefined;
  }

  /**
   * Takes over a channel (opened by readValue after a start) to the swtpm whose state is in `stateDir`, and
   * writes until stopped or the channel fails.
   */
  async run(channel: TpmChannel, stateDir: string): Promise<void> {
    this.channel = channel;
    this.stateDir = stateDir;
    this.stopping = false;
    this.ended = undefined;
    const defined = responseCode(await channel.send(tpm2.nvDefineSpace(NV_INDEX, NV_SIZE)));
    if (defined !== 0 && defined !== TPM_RC_NV_DEFINED)
      throw new Error(`TPM2_NV_DefineSpace answered 0x${defined.toString(16)}`);
    this.loop = this.writeLoop(channel).catch((error) => {
      if (!this.stopping) this.ended = error;
    });
  }

  private async writeLoop(channel: TpmChannel): Promise<void> {
    while (!this.stopping) {
      const seq = this.lastSent + 1;
      this.lastSent = seq;
      const rc = responseCode(await withTimeout(channel.send(tpm2.nvWrite(NV_INDEX, encode(seq))), WRITE_TIMEOUT_MS));
      const at = Date.now();
      if (rc !== 0) throw new Error(`TPM2_NV_Write answered 0x${rc.toString(16)}`);
      this.answered.push({ seq, at });
      await this.recordState(seq);
      await delay(this.pauseMs());
    }
  }

  /** swtpm rewrites its state file before it answers: the file now holds `seq`. */
  private async recordState(seq: number): Promise<void> {
    const data = await readFile(join(this.stateDir, 'tpm2-00.permall')).catch(() => undefined);
    if (data) this.valueOfDigest.set(digest(data), seq);
  }

  /** Stops writing; resolves once the write in flight is answered. Leaves the channel open. */
  async pause(): Promise<void> {
    this.stopping = true;
    await this.loop;
    this.loop = undefined;
  }

  /** The guest goes away: closing the control channel makes swtpm (--terminate) exit, as when QEMU exits. */
  async close(): Promise<void> {
    await this.pause();
    this.channel?.close();
    this.channel = undefined;
  }

  /** The write answered when the guest was told `seq` (or undefined for a value never answered). */
  answerOf(seq: number): AnsweredWrite | undefined {
    let low = 0;
    let high = this.answered.length - 1;
    while (low <= high) {
      const middle = (low + high) >> 1;
      const write = this.answered[middle]!;
      if (write.seq === seq) return write;
      if (write.seq < seq) low = middle + 1;
      else high = middle - 1;
    }
    return undefined;
  }
}
