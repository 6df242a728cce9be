/**
 * Live migrations under way, by VM. The destination's state reports are
 * held here (its newest of each kind) until the migration is settled: they
 * are committed if it completes and dropped if it is abandoned.
 */
import type { StateChange } from '../agent/host-agent.js';
import type { StateKind } from '../store/index.js';

export class MigrationsUnderWay {
  private readonly held = new Map<string, Map<StateKind, StateChange>>();

  begin(vm: string): void {
    this.held.set(vm, new Map());
  }

  /** Keeps the destination's report; false when no migration of the VM is under way. */
  hold(change: StateChange): boolean {
    const reports = this.held.get(change.vm);
    reports?.set(change.kind, change);
    return reports !== undefined;
  }

  /** What the destination reported meanwhile, newest of each kind. */
  peek(vm: string): StateChange[] {
    return [...(this.held.get(vm)?.values() ?? [])];
  }

  end(vm: string): void {
    this.held.delete(vm);
  }
}
