/**
 * A SoftHSM2 token of the test's own (Debian's softhsm2): its token directory
 * and configuration in the test's directory, so the host's /var/lib/softhsm
 * is untouched. SoftHSM finds its configuration through SOFTHSM2_CONF, which
 * whoever loads the module must have in its environment.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const exec = promisify(execFile);

const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

export interface SoftHsm {
  /** SOFTHSM2_CONF for whoever loads the module. */
  conf: string;
  /** Where the tokens live: moving it away is the token going away. */
  tokens: string;
  module: string;
  /** The user PIN, and a 0600 file holding it. */
  pin: string;
  pinFile: string;
  /** Initialises one more token, with the same PIN. */
  addToken(label: string): Promise<void>;
}

export async function softHsm(dir: string, tokenLabel: string): Promise<SoftHsm> {
  const tokens = join(dir, 'softhsm-tokens');
  await mkdir(tokens, { recursive: true, mode: 0o700 });
  const conf = join(dir, 'softhsm2.conf');
  await writeFile(
    conf,
    `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`,
  );
  const pin = randomBytes(6).toString('hex');
  const pinFile = join(dir, 'pkcs11.pin');
  await writeFile(pinFile, `${pin}\n`, { mode: 0o600 });
  const addToken = async (label: string) => {
    await exec(
      'softhsm2-util',
      ['--init-token', '--free', '--label', label, '--pin', pin, '--so-pin', randomBytes(6).toString('hex')],
      { env: { ...process.env, SOFTHSM2_CONF: conf } },
    );
  };
  await addToken(tokenLabel);
  return { conf, tokens, module: SOFTHSM_MODULE, pin, pinFile, addToken };
}
