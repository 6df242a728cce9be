/**
 * The token's user PIN, from a file only its owner can read or from the
 * environment; never from the command line, where every user's `ps` sees it.
 */
import { readFile, stat } from 'node:fs/promises';
import { InvalidArgumentError } from '../../errors.js';

export const PIN_ENVIRONMENT = 'VTPM_PKCS11_PIN';

export async function readPin(pinFile: string | undefined): Promise<string> {
  if (pinFile === undefined) {
    const pin = process.env[PIN_ENVIRONMENT];
    if (!pin)
      throw new InvalidArgumentError(
        '--pkcs11-pin-file',
        `the token's user PIN in a file (or in ${PIN_ENVIRONMENT}) with --key-manager pkcs11`,
      );
    return pin;
  }
  const { mode } = await stat(pinFile).catch(() => {
    throw new InvalidArgumentError('--pkcs11-pin-file', 'a readable file holding the PIN', pinFile);
  });
  if (mode & 0o077)
    throw new InvalidArgumentError(
      '--pkcs11-pin-file',
      `a file only its owner can read (chmod 600 ${pinFile}); it is ${(mode & 0o777).toString(8)}`,
    );
  const pin = (await readFile(pinFile, 'utf8')).replace(/\r?\n$/, '');
  if (!pin) throw new InvalidArgumentError('--pkcs11-pin-file', 'a file holding the PIN; it is empty', pinFile);
  return pin;
}
