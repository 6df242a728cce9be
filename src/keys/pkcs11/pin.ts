/**
 * The token's user PIN, from a file only its owner can read or from the
 * environment; never from the command line, where every user's `ps` sees it.
 * Taken from the environment, it is removed from it, so no child inherits it.
 */
import { InvalidArgumentError } from '../../errors.js';
import { readOwnerOnlyFile } from '../owner-only-file.js';
import { PIN_ENVIRONMENT } from '../settings.js';

export async function readPin(pinFile: string | undefined): Promise<string> {
  if (pinFile === undefined) {
    const pin = process.env[PIN_ENVIRONMENT];
    if (!pin)
      throw new InvalidArgumentError(
        '--pkcs11-pin-file',
        `the token's user PIN in a file (or in ${PIN_ENVIRONMENT}) with --key-manager pkcs11`,
      );
    // Read once: every child the process spawns would otherwise inherit it.
    delete process.env[PIN_ENVIRONMENT];
    return pin;
  }
  return readOwnerOnlyFile(pinFile, '--pkcs11-pin-file', 'the PIN');
}
