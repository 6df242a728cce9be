/**
 * Unauthenticated traffic is throttled: an address whose requests failed
 * authentication too often within a window is answered 429 until the window
 * has passed (a request without a token at once, without any lookup); a
 * valid token from it still passes, so a flood from a shared address locks
 * out nobody. Memory is bounded: past a number of addresses the oldest are
 * forgotten.
 */
import { TooManyRequestsError } from '../../errors.js';

const WINDOW_MS = 10_000;
const FAILURES_ALLOWED = 50;
const ADDRESSES_KEPT = 10_000;

interface Window {
  startedAt: number;
  failures: number;
}

export class AuthThrottle {
  private readonly windows = new Map<string, Window>();

  constructor(
    private readonly now: () => number = Date.now,
    private readonly allowed = FAILURES_ALLOWED,
  ) {}

  private current(address: string): Window | undefined {
    const window = this.windows.get(address);
    if (window && this.now() - window.startedAt >= WINDOW_MS) {
      this.windows.delete(address);
      return undefined;
    }
    return window;
  }

  /** Refuses an address that failed too often in the current window. */
  check(address: string): void {
    const window = this.current(address);
    if (window && window.failures >= this.allowed) {
      const wait = Math.ceil((WINDOW_MS - (this.now() - window.startedAt)) / 1000);
      throw new TooManyRequestsError(`too many requests without a valid token from ${address}: wait ${wait} s`);
    }
  }

  failed(address: string): void {
    const window = this.current(address) ?? { startedAt: this.now(), failures: 0 };
    window.failures += 1;
    this.windows.delete(address);
    this.windows.set(address, window);
    if (this.windows.size > ADDRESSES_KEPT) this.windows.delete(this.windows.keys().next().value!);
  }
}
