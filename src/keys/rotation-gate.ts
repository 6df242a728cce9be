/**
 * Keeps a backend's rotation and its other operations apart: a rotation waits
 * for the stores, reads and deletes already under way, and any that start
 * while it waits or runs wait for it. Without it, a secret whose file a store
 * renames into place after the rotation listed the directory stays under the
 * key the rotation then destroys.
 */
export class RotationGate {
  private inFlight = 0;
  private readonly drained: (() => void)[] = [];
  /** Settles (never rejects) when the exclusive use last asked for has ended. */
  private exclusive: Promise<void> | undefined;

  /** Runs `work` once no rotation is waiting or running; a rotation asked for meanwhile waits for it. */
  async shared<T>(work: () => Promise<T>): Promise<T> {
    while (this.exclusive) await this.exclusive;
    this.inFlight += 1;
    try {
      return await work();
    } finally {
      this.inFlight -= 1;
      if (this.inFlight === 0) for (const wake of this.drained.splice(0)) wake();
    }
  }

  /**
   * Runs `work` alone: from this call on nothing shared starts, and `work`
   * begins once what was under way, and any earlier exclusive use, has ended.
   */
  alone<T>(work: () => Promise<T>): Promise<T> {
    const previous = this.exclusive;
    const run = (async () => {
      await previous;
      if (this.inFlight > 0) await new Promise<void>((resolve) => this.drained.push(resolve));
      return work();
    })();
    const ended: Promise<void> = run.then(
      () => this.ended(ended),
      () => this.ended(ended),
    );
    this.exclusive = ended;
    return run;
  }

  private ended(use: Promise<void>): void {
    if (this.exclusive === use) this.exclusive = undefined;
  }
}
