/** Parsers of option values shared by several commands; a bad value is a usage error naming the flag. */
import { readFile, stat } from 'node:fs/promises';
import { InvalidArgumentError as CommanderArgumentError } from 'commander';
import { InvalidArgumentError } from '../errors.js';

export function keyValue(field: string) {
  return (value: string, previous: Record<string, string> = {}): Record<string, string> => {
    const at = value.indexOf('=');
    if (at <= 0) throw new CommanderArgumentError(`${field} takes KEY=VALUE, got "${value}"`);
    return { ...previous, [value.slice(0, at)]: value.slice(at + 1) };
  };
}

function integerAtLeast(minimum: number) {
  return (field: string) =>
    (value: string): number => {
      const parsed = Number(value);
      if (!/^\d+$/.test(value) || parsed < minimum)
        throw new CommanderArgumentError(`${field} takes a whole number of at least ${minimum}, got "${value}"`);
      return parsed;
    };
}
export const positiveInteger = integerAtLeast(1);
export const wholeNumber = integerAtLeast(0);

/**
 * A file that an argument names, read whole: one that is missing or unreadable, not a regular file (a
 * directory, a FIFO, /dev/zero, which never ends) or larger than `limit` is the caller's input, refused
 * naming the argument, not an unexpected error.
 */
export async function readArgumentFile(
  path: string,
  argument: string,
  holding: string,
  limit: number,
): Promise<Buffer> {
  const refused = (expected: string) => new InvalidArgumentError(argument, expected, path);
  const info = await stat(path).catch(() => {
    throw refused(`a readable file holding ${holding}`);
  });
  if (!info.isFile()) throw refused(`a regular file holding ${holding}`);
  if (info.size > limit) throw refused(`a file of at most ${limit} bytes holding ${holding}`);
  return readFile(path).catch(() => {
    throw refused(`a readable file holding ${holding}`);
  });
}
