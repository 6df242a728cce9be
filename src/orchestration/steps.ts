/**
 * An operation as a pipeline of named steps, each with the undo of what it
 * made beside it (libvirt's qemu_tpm.c works this way). When a step fails,
 * the steps before it are undone in reverse order and the step's failure is
 * the one reported. An undo that fails too is logged and handed to
 * `undoFailed`, which leaves a state that reconcile or the user finishes.
 */
import type { Logger } from 'pino';

export interface Step<S> {
  readonly name: string;
  run(state: S): Promise<void>;
  /** Absent when the step made nothing that outlives a failure. */
  undo?(state: S): Promise<void>;
}

export interface Pipeline<S> {
  /** What the operation is, for the log: "create", "start". */
  operation: string;
  steps: ReadonlyArray<Step<S>>;
  logger: Logger;
  undoFailed?(state: S, error: unknown): Promise<void>;
}

export async function runSteps<S>(pipeline: Pipeline<S>, state: S): Promise<void> {
  const done: Array<Step<S>> = [];
  for (const step of pipeline.steps) {
    try {
      await step.run(state);
    } catch (error) {
      pipeline.logger.warn({ operation: pipeline.operation, step: step.name, err: error }, 'step failed; undoing');
      await undo(pipeline, done, state);
      throw error;
    }
    done.push(step);
  }
}

async function undo<S>(pipeline: Pipeline<S>, done: Array<Step<S>>, state: S): Promise<void> {
  for (const step of done.reverse()) {
    if (!step.undo) continue;
    try {
      await step.undo(state);
    } catch (error) {
      pipeline.logger.error({ operation: pipeline.operation, step: step.name, err: error }, 'undo failed');
      await pipeline.undoFailed?.(state, error);
      return;
    }
  }
}
