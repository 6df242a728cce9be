/**
 * Every command of the `vtpm` CLI, read from its own help, recursively: a
 * command added to the program is fuzzed without a change here. Help is
 * what commander prints from the program's definition, so its arguments,
 * options and choices are the ones the parser applies.
 */
import { execFile } from 'node:child_process';

export interface CommandOption {
  long: string;
  /** Takes a value (`--out <file>`), an optional one (`[value]`), or none (a flag). */
  value: 'required' | 'optional' | 'none';
  choices: string[];
  /** Its default, as the help shows it. */
  default: string | undefined;
}

export interface CliCommand {
  /** The words that name it, e.g. ['libvirt', 'attach']. */
  path: string[];
  /** Positional arguments, in order. */
  args: Array<{ name: string; required: boolean; variadic: boolean }>;
  options: CommandOption[];
  /** A command of commands (`vtpm libvirt`): it runs nothing by itself. */
  group: boolean;
}

function help(cli: string, path: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(process.execPath, [cli, ...path, '--help'], { timeout: 30_000 }, (error, stdout) =>
      error ? reject(error) : resolve(stdout),
    ),
  );
}

/** The entries of one section ("Options:", "Commands:", ...), with their wrapped descriptions joined. */
function section(text: string, title: string): string[] {
  const lines = text.split('\n');
  const start = lines.indexOf(`${title}:`);
  if (start < 0) return [];
  const entries: string[] = [];
  for (const line of lines.slice(start + 1)) {
    if (line.trim() === '') break;
    if (/^ {2}\S/.test(line)) entries.push(line.trim());
    else if (entries.length > 0) entries[entries.length - 1] += ` ${line.trim()}`;
  }
  return entries;
}

function optionOf(entry: string): CommandOption | undefined {
  const flags = /^(?:-\w, )?(--[\w-]+)(?: (<[^>]+>|\[[^\]]+\]))?/.exec(entry);
  if (!flags) return undefined;
  const choices = /\(choices: ([^)]*)\)/.exec(entry)?.[1];
  return {
    long: flags[1]!,
    value: flags[2] === undefined ? 'none' : flags[2].startsWith('<') ? 'required' : 'optional',
    choices: choices ? [...choices.matchAll(/"([^"]*)"/g)].map((m) => m[1]!) : [],
    default: /\(default: "([^"]*)"\)/.exec(entry)?.[1],
  };
}

function argsOf(usage: string): CliCommand['args'] {
  return [...usage.matchAll(/([<[])([\w.-]+?)(\.\.\.)?[>\]]/g)]
    .filter((m) => m[2] !== 'options' && m[2] !== 'command')
    .map((m) => ({ name: m[2]!, required: m[1] === '<', variadic: m[3] !== undefined }));
}

/** Runs `work` over `items`, `width` at a time: each help is a process of its own. */
async function inBatches<T, R>(items: T[], width: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = [];
  for (let i = 0; i < items.length; i += width)
    results.push(...(await Promise.all(items.slice(i, i + width).map(work))));
  return results;
}

/** Every command under `path` (the program itself when empty), each read from its own --help. */
export async function cliCommands(cli: string, path: string[] = []): Promise<CliCommand[]> {
  const text = await help(cli, path);
  const entries = section(text, 'Commands');
  const here: CliCommand = {
    path,
    args: argsOf(/^Usage: .*$/m.exec(text)?.[0] ?? ''),
    options: section(text, 'Options')
      .map(optionOf)
      .filter((o): o is CommandOption => o !== undefined && o.long !== '--help' && o.long !== '--version'),
    group: entries.length > 0,
  };
  // `help` is commander's own: its help is the program's, so it is read from its entry here.
  const helpCommands = entries
    .filter((entry) => entry.startsWith('help '))
    .map((entry) => ({ path: [...path, 'help'], args: argsOf(entry), options: [], group: false }));
  const names = entries.map((entry) => entry.split(' ')[0]!).filter((name) => name !== 'help');
  const below = await inBatches(names, 3, (name) => cliCommands(cli, [...path, name]));
  return [here, ...helpCommands, ...below.flat()];
}
