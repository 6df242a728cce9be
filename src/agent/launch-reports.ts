/**
 * What a host's launches of swtpm tell the control plane: each change of a
 * vTPM's state, in order per VM, and each exit, once the final state was
 * taken. The listeners are the control plane's (in `vtpm serve`, the state
 * ingest; in `vtpm agent`, the posts to the control plane).
 */
import type { Logger } from 'pino';
import { UnreachableError } from '../errors.js';
import type { SwtpmInstance } from '../swtpm/instance.js';
import type { StateChange, VtpmExit } from './host-agent.js';
import type { StateWatcher } from './state-watcher.js';
import { watchVtpm, type WatchedVtpm } from './vtpm-watchers.js';

export class LaunchReports {
  private readonly exitListeners: Array<(exit: VtpmExit) => void> = [];
  private readonly changeListeners: Array<(change: StateChange) => Promise<void>> = [];

  constructor(
    private readonly hostName: string,
    private readonly logger: Logger,
    private readonly syncTaken: (lagMs: number) => void = () => undefined,
  ) {}

  /** Watchers of one launch's files, not started yet, that report here. */
  watch(vtpm: Omit<WatchedVtpm, 'report' | 'logger' | 'taken'>): StateWatcher[] {
    return watchVtpm({
      ...vtpm,
      report: (change) => this.reportChange(change),
      taken: this.syncTaken,
      logger: this.logger,
    });
  }

  /** Nobody listening yet (the control plane is still starting): the watcher tries again later. */
  private async reportChange(change: StateChange): Promise<void> {
    if (this.changeListeners.length === 0) {
      throw new UnreachableError(`the control plane does not take ${this.hostName}'s reports yet`);
    }
    await Promise.all(this.changeListeners.map((listener) => listener(change)));
  }

  /**
   * Until the final state is taken the exit is not reported: the vTPM must not count as stopped. `forget`
   * lets go of the launch and its runtime files first.
   */
  async reportExit(
    vm: string,
    id: string,
    watchers: StateWatcher[],
    { code, signal }: Awaited<SwtpmInstance['exited']>,
    forget: () => Promise<void>,
  ): Promise<void> {
    try {
      for (const watcher of watchers) await watcher.close();
    } catch (error) {
      this.logger.error({ vm, err: error }, 'the agent let go before the final state was reported');
      return;
    }
    await forget();
    const level = code === 0 || code === null ? 'info' : 'warn';
    this.logger[level]({ vm, code, signal, instance: id }, 'swtpm exited');
    for (const listener of this.exitListeners) listener({ vm, code, signal, instance: id });
  }

  onStateChange(listener: (change: StateChange) => Promise<void>): void {
    this.changeListeners.push(listener);
  }

  onExit(listener: (exit: VtpmExit) => void): void {
    this.exitListeners.push(listener);
  }

  /** No listener hears of anything any more. */
  close(): void {
    this.exitListeners.length = 0;
    this.changeListeners.length = 0;
  }
}
