/** The CLI's view of the API: one request function, errors turned back into typed errors. */
import { readFile } from 'node:fs/promises';
import { UnauthenticatedError, UnreachableError, VtpmError, type ErrorDetails } from '../errors.js';
import { adminTokenPath } from '../control/tokens.js';

/** An error the server reported, carrying the server's own code and status. */
export class RemoteError extends VtpmError {
  constructor(readonly code: string, readonly status: number, message: string, details: ErrorDetails) {
    super(message, details);
  }
}

export interface ClientOptions {
  url: string;
  token?: string | undefined;
  dataDir: string;
  /** Per request; the default suits interactive use, the libvirt hook sets its own. */
  timeoutMs?: number | undefined;
}

const DEFAULT_TIMEOUT_MS = 120_000;

export class ApiClient {
  private constructor(private readonly url: string, private readonly token: string | undefined, private readonly timeoutMs: number) {}

  /** The token comes from --token, VTPM_TOKEN, or the server's data directory, in that order. */
  static async connect(options: ClientOptions): Promise<ApiClient> {
    const token = options.token || process.env.VTPM_TOKEN || (await readFile(adminTokenPath(options.dataDir), 'utf8').then((t) => t.trim(), () => undefined));
    return new ApiClient(options.url.replace(/\/+$/, ''), token, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    if (this.token === undefined) throw new UnauthenticatedError();
    let response: Response;
    try {
      response = await fetch(`${this.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${this.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (error) {
      const cause = (error as Error).name === 'TimeoutError' ? `no answer within ${this.timeoutMs / 1000} s` : (error as { cause?: { code?: string } }).cause?.code ?? (error as Error).message;
      throw new UnreachableError(`cannot reach vtpm-manager at ${this.url} (${cause}): is \`vtpm serve\` running? Set --url or VTPM_URL`, { url: this.url });
    }
    if (response.status === 204) return undefined as T;
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new UnreachableError(`${this.url} answered ${response.status} with something that is not the vtpm-manager API`, { url: this.url });
    }
    if (!response.ok) {
      const error = (parsed as { error?: { code?: string; message?: string; details?: ErrorDetails } }).error;
      throw new RemoteError(error?.code ?? 'internal', response.status, error?.message ?? `HTTP ${response.status}`, error?.details ?? {});
    }
    return parsed as T;
  }
}
