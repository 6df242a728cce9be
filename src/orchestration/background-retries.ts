/**
 * Work the control plane owes and must not drop: an attempt that failed
 * (the key manager away, say) is tried again later, with a growing pause,
 * until it succeeds or the control plane closes. One pending retry per key.
 */
export interface RetryTiming {
  firstPauseMs: number;
  longestPauseMs: number;
}

const DEFAULT_TIMING: RetryTiming = { firstPauseMs: 1000, longestPauseMs: 30_000 };

export class BackgroundRetries {
  private readonly pending = new Map<string, NodeJS.Timeout>();
  private readonly running = new Set<Promise<void>>();
  private closed = false;

  constructor(private readonly timing: RetryTiming = DEFAULT_TIMING) {}

  /**
   * Runs `attempt` after a pause, again after a longer one each time it throws (`onFailure` is told), until it
   * resolves. A key already pending keeps its schedule.
   */
  schedule(key: string, attempt: () => Promise<void>, onFailure: (error: unknown) => void): void {
    if (this.closed || this.pending.has(key)) return;
    const tryAfter = (pauseMs: number) => {
      const timer = setTimeout(() => {
        const run = attempt().then(
          () => {
            this.pending.delete(key);
          },
          (error: unknown) => {
            onFailure(error);
            if (!this.closed) tryAfter(Math.min(pauseMs * 2, this.timing.longestPauseMs));
          },
        );
        this.running.add(run);
        void run.finally(() => this.running.delete(run));
      }, pauseMs);
      this.pending.set(key, timer);
    };
    tryAfter(this.timing.firstPauseMs);
  }

  /** No new attempt starts; one under way is waited for. */
  async close(): Promise<void> {
    this.closed = true;
    for (const timer of this.pending.values()) clearTimeout(timer);
    this.pending.clear();
    await Promise.all([...this.running]);
  }
}
