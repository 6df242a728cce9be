/** Parsers of option values shared by several commands; a bad value is a usage error naming the flag. */
import { InvalidArgumentError as CommanderArgumentError } from 'commander';

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
