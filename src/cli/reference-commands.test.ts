import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('./main.js', import.meta.url));
const vtpm = (...args: string[]) => execFileSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

/** What bash offers after `words` (the last one being completed), with the completion `vtpm` prints. */
function completions(...words: string[]): string[] {
  const script = `source <(${JSON.stringify(process.execPath)} ${JSON.stringify(cli)} completion bash)
COMP_WORDS=(vtpm ${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length}; _vtpm
printf '%s\\n' "\${COMPREPLY[@]}"`;
  return execFileSync('bash', ['-c', script], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

describe('shell completion and the manual page', () => {
  it('bash completes commands, subcommands and their options from the command definitions', () => {
    assert.deepEqual(completions('cr'), ['create']);
    assert.deepEqual(completions('libvirt', 'at'), ['attach']);
    assert.ok(completions('delete', '--').includes('--yes'));
    assert.ok(completions('import', 'FILE', '--').includes('--clone'));
    assert.ok(!completions('--').includes('--token'), 'the refused --token is not offered');
  });

  it('zsh gets the same through bashcompinit', () => {
    const zsh = vtpm('completion', 'zsh');
    assert.match(zsh, /^#compdef vtpm\n/);
    assert.match(zsh, /complete -o default -F _vtpm vtpm/);
  });

  it('the manual page has every command with its options', () => {
    const page = vtpm('man');
    assert.match(page, /^\.TH VTPM 1 /);
    for (const usage of ['vtpm create', 'vtpm libvirt install\\-hook', 'vtpm backup restore', 'vtpm completion'])
      assert.ok(page.includes(`.SS ${usage}`), usage);
    assert.ok(page.includes('.B \\-\\-retention\\-days <days>'));
    assert.ok(!page.includes('\\-\\-token <token>'));
  });
});
