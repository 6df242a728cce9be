/**
 * The HTTP client of the product's APIs (the CLI, the libvirt hook, host agents and the
 * control plane calling them): one request function, errors turned back into typed errors.
 */
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import {
  InvalidArgumentError,
  UnauthenticatedError,
  UnreachableError,
  VtpmError,
  type ErrorDetails,
} from '../errors.js';
import { adminTokenPath } from '../auth/admin-token-path.js';
import { readOwnerOnlyFile } from '../keys/owner-only-file.js';
import { REQUEST_ID_HEADER } from './request-id-header.js';
import { requireSecureUrl } from './secure-url.js';

/** An error the server reported, carrying the server's own code and status. */
export class RemoteError extends VtpmError {
  constructor(
    readonly code: string,
    readonly status: number,
    message: string,
    details: ErrorDetails,
  ) {
    super(message, details);
  }
}

export interface ClientOptions {
  url: string;
  /** A token already read (the libvirt hook's); otherwise `tokenFile`, VTPM_TOKEN, then the data directory's. */
  token?: string | undefined;
  /** --token-file: a file only its owner can read, holding the API token. */
  tokenFile?: string | undefined;
  dataDir: string;
  /** Per request; the default suits interactive use, the libvirt hook sets its own. */
  timeoutMs?: number | undefined;
  /** PEM file of the CA that issued the control plane's TLS certificate, when the system's CAs did not. */
  caFile?: string | undefined;
  /** What to tell the user when the control plane cannot be reached; the CLI's names --url. */
  unreachableHint?: string | undefined;
}

interface Outgoing {
  method: string;
  headers: Record<string, string>;
  body: string | undefined;
  ca: Buffer | undefined;
  timeoutMs: number;
}

/** One request over http or https, verifying the server's certificate (against `ca` when given). */
async function send(url: string, outgoing: Outgoing): Promise<{ status: number; text: string }> {
  const target = new URL(url);
  // Loaded only for TLS: the libvirt hook on loopback would pay for node:https and its crypto on every call.
  const https = target.protocol === 'https:' ? await import('node:https') : undefined;
  return new Promise((resolve, reject) => {
    const options = {
      method: outgoing.method,
      headers: outgoing.headers,
      signal: AbortSignal.timeout(outgoing.timeoutMs),
    };
    const onResponse = (response: IncomingMessage) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, text: Buffer.concat(chunks).toString() }));
      response.on('error', reject);
    };
    const request = https
      ? https.request(target, { ...options, ...(outgoing.ca && { ca: outgoing.ca }) }, onResponse)
      : httpRequest(target, options, onResponse);
    request.on('error', reject);
    request.end(outgoing.body);
  });
}

const DEFAULT_TIMEOUT_MS = 120_000;

export class ApiClient {
  private constructor(
    private readonly url: string,
    private readonly token: string | undefined,
    private readonly timeoutMs: number,
    private readonly ca: Buffer | undefined,
    /** What to check when the server cannot be reached; a user of the CLI has other levers than a process. */
    private readonly unreachableHint: string,
    /** Sent with each request, so the servers' log lines of one operation share it (http/request-id.ts). */
    private readonly requestId: () => string | undefined,
  ) {}

  /** The token comes from `token`, --token-file, VTPM_TOKEN, or the server's data directory, in that order. */
  static async connect(options: ClientOptions): Promise<ApiClient> {
    const token =
      options.token ||
      (options.tokenFile !== undefined
        ? (await readOwnerOnlyFile(options.tokenFile, '--token-file', 'the API token')).trim()
        : undefined) ||
      process.env.VTPM_TOKEN ||
      (await readFile(adminTokenPath(options.dataDir), 'utf8').then(
        (t) => t.trim(),
        () => undefined,
      ));
    // The token is a credential: it goes nowhere in the clear, off this machine.
    if (token) requireSecureUrl('--url', options.url, "vtpm serve's API (the API token travels to it)");
    const caFile = options.caFile ?? process.env.VTPM_CA_FILE;
    const ca = caFile
      ? await readFile(caFile).catch(() => {
          throw new InvalidArgumentError('--ca-file', 'a readable PEM file with the CA certificate', caFile);
        })
      : undefined;
    const hint = options.unreachableHint ?? 'is `vtpm serve` running? Set --url or VTPM_URL';
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    // A user's command (or a hook call) is one operation: its requests carry one id.
    const requestId = randomUUID();
    return new ApiClient(options.url.replace(/\/+$/, ''), token, timeoutMs, ca, hint, () => requestId);
  }

  /** A client with a credential of its own (a host agent's), never the environment's or a data directory's. */
  static async withToken(options: {
    url: string;
    token: string;
    caFile?: string | undefined;
    timeoutMs?: number | undefined;
    /** The id of the operation a call is part of, asked at each call; none: each server names its own. */
    requestId?: (() => string | undefined) | undefined;
  }): Promise<ApiClient> {
    const ca = options.caFile
      ? await readFile(options.caFile).catch(() => {
          throw new InvalidArgumentError('--ca-file', 'a readable PEM file with the CA certificate', options.caFile);
        })
      : undefined;
    // The control plane calling a host's agent, or an agent its control plane: neither has a --url to set.
    const hint = 'is the vtpm agent or vtpm serve at that address running, and reachable from here?';
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const requestId = options.requestId ?? (() => undefined);
    return new ApiClient(options.url.replace(/\/+$/, ''), options.token, timeoutMs, ca, hint, requestId);
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    if (this.token === undefined) throw new UnauthenticatedError();
    let response: { status: number; text: string };
    const requestId = this.requestId();
    try {
      response = await send(`${this.url}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${this.token}`,
          ...(requestId && { [REQUEST_ID_HEADER]: requestId }),
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        ca: this.ca,
        timeoutMs: this.timeoutMs,
      });
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      const timedOut =
        (error as Error).name === 'TimeoutError' || (error as { cause?: Error }).cause?.name === 'TimeoutError';
      const cause = timedOut ? `no answer within ${this.timeoutMs / 1000} s` : (code ?? (error as Error).message);
      const hint =
        code !== undefined && /CERT|SELF_SIGNED|UNABLE_TO|ERR_TLS/.test(code)
          ? 'its TLS certificate is not one this client trusts: ' +
            'pass --ca-file or set VTPM_CA_FILE to the CA that issued it'
          : code === 'EPROTO'
            ? `nothing speaks TLS there: use http:// for a service without --tls-cert, or start it with --tls-cert`
            : this.unreachableHint;
      throw new UnreachableError(`cannot reach vtpm-manager at ${this.url} (${cause}): ${hint}`, { url: this.url });
    }
    const text = response.text;
    if (response.status === 204) return undefined as T;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new UnreachableError(
        `${this.url} answered ${response.status} with something that is not the vtpm-manager API`,
        { url: this.url },
      );
    }
    if (response.status >= 400) {
      const error = (parsed as { error?: { code?: string; message?: string; details?: ErrorDetails } }).error;
      throw new RemoteError(
        error?.code ?? 'internal',
        response.status,
        error?.message ?? `HTTP ${response.status}`,
        error?.details ?? {},
      );
    }
    return parsed as T;
  }
}
