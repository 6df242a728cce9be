import { InvalidArgumentError } from '../errors.js';

/** A destructive step goes ahead only when the operator says so: on a terminal by answering, in a script by --yes. */
export async function confirm(question: string, yes: boolean): Promise<void> {
  if (yes) return;
  if (!process.stdin.isTTY || !process.stderr.isTTY)
    throw new InvalidArgumentError('--yes', `a confirmation: ${question} (no terminal to ask on: pass --yes)`);
  // Loaded only to ask: with --yes, or refused for want of a terminal, nothing reads a line.
  const { createInterface } = await import('node:readline/promises');
  const prompt = createInterface({ input: process.stdin, output: process.stderr });
  const answer = await prompt.question(`${question} [y/N] `).finally(() => prompt.close());
  if (!/^y(es)?$/i.test(answer.trim())) throw new InvalidArgumentError('confirmation', 'yes', answer.trim() || 'no');
}
