/**
 * `vtpm completion bash|zsh` and `vtpm man`: shell completion and a manual
 * page, both written from the command definitions themselves, so that
 * neither can fall behind a new command or option.
 */
import { Argument, type Command, type Option } from 'commander';

interface Described {
  path: string[];
  command: Command;
}

/** Every command under `root` that runs something, with its words (`libvirt attach`). */
function commandsOf(root: Command, path: string[] = []): Described[] {
  return root.commands.flatMap((command) => {
    const words = [...path, command.name()];
    const below = commandsOf(command, words);
    return below.length > 0 ? below : [{ path: words, command }];
  });
}

/** What a user may type: an option kept only to refuse it with a reason (--token) is left out. */
const shown = (command: Command): Option[] => command.options.filter((option) => !option.hidden);

function flagsOf(command: Command): string[] {
  return shown(command).flatMap((option) => [option.long, option.short].filter((f): f is string => Boolean(f)));
}

/** The words that may follow `path`: its subcommands, or its options. */
function nextWords(root: Command): Map<string, string[]> {
  const words = new Map<string, string[]>();
  const walk = (command: Command, path: string[]) => {
    const key = path.join(' ');
    const subcommands = command.commands.map((c) => c.name());
    words.set(key, [...subcommands, ...flagsOf(command), '--help']);
    for (const sub of command.commands) walk(sub, [...path, sub.name()]);
  };
  walk(root, []);
  return words;
}

function bashCompletion(root: Command): string {
  const cases = [...nextWords(root)].map(([path, words]) => `    '${path}') words='${words.join(' ')}' ;;`).join('\n');
  return `# vtpm completion for bash: source <(vtpm completion bash)
_vtpm() {
  local path='' word words i
  for ((i = 1; i < COMP_CWORD; i++)); do
    word=\${COMP_WORDS[i]}
    [[ $word == -* ]] && continue
    case "\${path:+$path }$word" in
${[...nextWords(root).keys()]
  .filter(Boolean)
  .map((path) => `      '${path}') path='${path}' ;;`)
  .join('\n')}
    esac
  done
  case "$path" in
${cases}
  esac
  COMPREPLY=($(compgen -W "$words" -- "\${COMP_WORDS[COMP_CWORD]}"))
}
complete -o default -F _vtpm vtpm
`;
}

function zshCompletion(root: Command): string {
  return `#compdef vtpm
# vtpm completion for zsh: vtpm completion zsh > "\${fpath[1]}/_vtpm"
autoload -U bashcompinit && bashcompinit
${bashCompletion(root)}`;
}

const roff = (text: string) => text.replace(/\\/g, '\\\\').replace(/^[.']/gm, '\\&$&').replace(/-/g, '\\-');

function optionLine(option: Option): string {
  const defaulted =
    option.defaultValue === undefined || option.defaultValue === false
      ? ''
      : ` (default: ${String(option.defaultValue)})`;
  return `.TP\n.B ${roff(option.flags)}\n${roff(`${option.description}${defaulted}`)}`;
}

function manPage(root: Command, version: string): string {
  const sections = commandsOf(root).map(({ path, command }) => {
    const usage = `vtpm ${path.join(' ')} ${command.usage()}`.trim();
    const options = shown(command).map(optionLine).join('\n');
    return `.SS ${roff(usage)}\n${roff(command.description())}\n${options}`;
  });
  const globals = shown(root).map(optionLine).join('\n');
  return `.TH VTPM 1 "" "vtpm-manager ${version}" "vtpm-manager"
.SH NAME
vtpm \\- ${roff(root.description())}
.SH SYNOPSIS
.B vtpm
[\\fIoptions\\fR] \\fIcommand\\fR [\\fIarguments\\fR]
.SH DESCRIPTION
\`vtpm serve\` runs the service; every other command is a client of its API. Every command takes \\-\\-json for one
JSON document on standard output. Exit codes: 0 done, 2 bad input, 3 not found, 4 conflict, 5 unauthenticated,
6 swtpm, key manager, host setup or stored state failed, 7 unreachable or try again, 8 forbidden.
.SH OPTIONS
${globals}
.SH COMMANDS
${sections.join('\n')}
.SH FILES
.TP
.I /var/lib/vtpm
the data directory as root (\\-\\-data\\-dir, VTPM_DATA_DIR; otherwise ~/.local/share/vtpm): database, keys,
CA, working copies, logs
.SH SEE ALSO
.BR swtpm (8),
.BR virsh (1)
`;
}

export function registerReferenceCommands(program: Command, version: string): void {
  program
    .command('completion')
    .description('print shell completion: source <(vtpm completion bash), or zsh')
    .addArgument(new Argument('<shell>', 'bash or zsh').choices(['bash', 'zsh']))
    .action((shell: string) => {
      process.stdout.write(shell === 'zsh' ? zshCompletion(program) : bashCompletion(program));
    });
  program
    .command('man')
    .description('print the manual page (roff): vtpm man > /usr/local/share/man/man1/vtpm.1')
    .action(() => {
      process.stdout.write(manPage(program, version));
    });
}
