/**
 * A small HTTP proxy between a remote host's agent and the control plane,
 * one per direction, that does to the traffic what a bad network (or
 * someone on it holding the host's token) does, while a fault is on:
 * - delay: holds a request, and its answer, for a while;
 * - drop: resets the connection, before the request reaches the other side
 *   (it never arrived) or after (it was acted on, but the answer is lost);
 * - duplicate: sends a request twice, at once or one after the other, and
 *   answers with the first answer;
 * - replay: sends, besides each request, one recorded earlier again (the
 *   agent's reports: state changes, exits).
 * A connection the other side refuses (it is down) is reset, as it would
 * have been without the proxy.
 */
import {
  request as httpRequest,
  createServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { setTimeout as delay } from 'node:timers/promises';
import type { Prng } from './prng.js';

export type ProxyFault = 'delay' | 'drop' | 'duplicate' | 'replay';

interface Recorded {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: Buffer;
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** What the proxy did, for the summary. */
export interface ProxyCounts {
  forwarded: number;
  delayed: number;
  dropped: number;
  duplicated: number;
  replayed: number;
  /** Replayed requests the other side took (2xx): each must have changed nothing. */
  replaysTaken: number;
}

/** Recorded requests kept for replay; the oldest go first. */
const RECORDED_KEPT = 400;

async function bodyOf(stream: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

export class FaultProxy {
  private fault: ProxyFault | undefined;
  private readonly recorded: Recorded[] = [];
  readonly counts: ProxyCounts = { forwarded: 0, delayed: 0, dropped: 0, duplicated: 0, replayed: 0, replaysTaken: 0 };

  private constructor(
    private readonly server: Server,
    private readonly upstreamPort: number,
    private readonly prng: Prng,
    private readonly replayable: (path: string) => boolean,
  ) {}

  /** Listens on 127.0.0.1:`port` and forwards to 127.0.0.1:`upstreamPort`. */
  static async listen(
    port: number,
    upstreamPort: number,
    prng: Prng,
    replayable: (path: string) => boolean = () => false,
  ): Promise<FaultProxy> {
    const server = createServer();
    const proxy = new FaultProxy(server, upstreamPort, prng, replayable);
    server.on('request', (request, response) => void proxy.handle(request, response).catch(() => response.destroy()));
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, '127.0.0.1', resolve));
    return proxy;
  }

  get url(): string {
    const address = this.server.address();
    return `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  }

  /** The fault applied to traffic from now on; undefined: traffic passes untouched. */
  set(fault: ProxyFault | undefined): void {
    this.fault = fault;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const body = await bodyOf(request);
    const outgoing: Recorded = {
      method: request.method ?? 'GET',
      path: request.url ?? '/',
      headers: Object.fromEntries(
        Object.entries(request.headers).flatMap(([k, v]) => (typeof v === 'string' ? [[k, v]] : [])),
      ),
      body,
    };
    const fault = this.fault;
    if (fault === 'delay') {
      this.counts.delayed += 1;
      await delay(this.prng.int(50, 1500));
    }
    const dropBefore = fault === 'drop' && this.prng.next() < 0.25;
    const dropAfter = fault === 'drop' && !dropBefore && this.prng.next() < 0.33;
    if (dropBefore) {
      this.counts.dropped += 1;
      response.destroy();
      return;
    }
    let answer: Answer;
    try {
      answer = await this.forwardOnce(outgoing, fault);
    } catch {
      response.destroy();
      return;
    }
    if (this.replayable(outgoing.path) && outgoing.method === 'POST') {
      this.recorded.push(outgoing);
      if (this.recorded.length > RECORDED_KEPT) this.recorded.shift();
    }
    if (fault === 'replay' && this.recorded.length > 1) void this.replayOne();
    if (dropAfter) {
      this.counts.dropped += 1;
      response.destroy();
      return;
    }
    if (fault === 'delay') await delay(this.prng.int(0, 800));
    // The proxy's own connection to the client decides these, not the one it made upstream.
    const { connection: _c, 'keep-alive': _k, 'transfer-encoding': _t, ...headers } = answer.headers;
    response.writeHead(answer.status, { ...headers, 'content-length': String(answer.body.length) });
    response.end(answer.body);
  }

  /** Forwards a request (twice when duplicating): the first answer is the one returned. */
  private async forwardOnce(outgoing: Recorded, fault: ProxyFault | undefined): Promise<Answer> {
    this.counts.forwarded += 1;
    if (fault !== 'duplicate') return this.send(outgoing);
    this.counts.duplicated += 1;
    if (this.prng.next() < 0.5) {
      const [first] = await Promise.allSettled([this.send(outgoing), this.send(outgoing)]);
      if (first.status === 'rejected') throw first.reason;
      return first.value;
    }
    const first = await this.send(outgoing);
    void this.send(outgoing).catch(() => undefined);
    return first;
  }

  private async replayOne(): Promise<void> {
    const old = this.recorded[this.prng.int(0, this.recorded.length - 2)]!;
    this.counts.replayed += 1;
    const answer = await this.send(old).catch(() => undefined);
    if (answer && answer.status < 300) this.counts.replaysTaken += 1;
  }

  private send(outgoing: Recorded): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const upstream = httpRequest(
        {
          host: '127.0.0.1',
          port: this.upstreamPort,
          method: outgoing.method,
          path: outgoing.path,
          headers: { ...outgoing.headers, connection: 'close' },
          agent: false,
        },
        (answer) => {
          bodyOf(answer).then(
            (body) => resolve({ status: answer.statusCode ?? 502, headers: answer.headers, body }),
            reject,
          );
        },
      );
      upstream.on('error', reject);
      upstream.end(outgoing.body);
    });
  }
}
