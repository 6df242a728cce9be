/**
 * Sealing the local key manager's master key to the host's TPM, through
 * tpm2-tools: the key becomes a sealed-data object under a primary key derived
 * from that TPM's owner seed. Its two blobs can sit in the data directory; only
 * the same TPM can load and unseal them, so a copied data directory opens
 * nothing anywhere else. The master key passes through pipes (tpm2_create's
 * standard input, tpm2_unseal's standard output), never a file;
 * the TPM's transient contexts live in a memory-backed scratch directory.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KeyManagerError, VtpmError } from '../../errors.js';
import { runProgram } from '../../swtpm/run-program.js';

export interface HostTpmOptions {
  /** tpm2-tools TCTI of the host's TPM: device:/dev/tpmrm0, or swtpm:path=... */
  tcti: string;
  /** A memory-backed directory for the TPM's context files. */
  scratchDir: string;
}

export interface SealedKey {
  public: Buffer;
  private: Buffer;
}

async function tpm2(options: HostTpmOptions, tool: string, args: string[], input?: string): Promise<string> {
  try {
    return (
      await runProgram(tool, args, {
        env: { TPM2TOOLS_TCTI: options.tcti },
        ...(input !== undefined && { stdin: input }),
        timeoutMs: 60_000,
      })
    ).stdout;
  } catch (error) {
    if (error instanceof VtpmError && error.code === 'host_setup')
      throw new KeyManagerError(
        `${tool} is not installed: sealing to the host's TPM needs the Debian package tpm2-tools`,
      );
    throw error;
  }
}

async function withPrimary<T>(
  options: HostTpmOptions,
  work: (dir: string, primary: string, flush: () => Promise<unknown>) => Promise<T>,
): Promise<T> {
  const dir = await mkdtemp(join(options.scratchDir, 'vtpm-host-tpm-'));
  // Without a resource manager (a bare TPM, or a swtpm) each tool leaves its objects loaded, and a TPM holds
  // only a few: flush them after every tool; the saved context files load them again when needed.
  const flush = () => tpm2(options, 'tpm2_flushcontext', ['-t']).catch(() => undefined);
  try {
    await flush();
    const primary = join(dir, 'primary.ctx');
    // The same template under the same owner seed gives the same key every time: nothing about it is stored.
    await tpm2(options, 'tpm2_createprimary', ['-Q', '-C', 'o', '-G', 'ecc', '-c', primary]).catch((error: unknown) => {
      throw new KeyManagerError(`the host TPM (${options.tcti}) cannot be used: ${(error as Error).message}`, {
        tcti: options.tcti,
      });
    });
    await flush();
    return await work(dir, primary, flush);
  } finally {
    await flush();
    await rm(dir, { recursive: true, force: true });
  }
}

export async function sealToHostTpm(key: Buffer, options: HostTpmOptions): Promise<SealedKey> {
  return withPrimary(options, async (dir, primary) => {
    const [pub, priv] = [join(dir, 'sealed.pub'), join(dir, 'sealed.priv')];
    await tpm2(options, 'tpm2_create', ['-Q', '-C', primary, '-i', '-', '-u', pub, '-r', priv], key.toString('hex'));
    return { public: await readFile(pub), private: await readFile(priv) };
  });
}

export async function unsealFromHostTpm(sealed: SealedKey, options: HostTpmOptions): Promise<Buffer> {
  return withPrimary(options, async (dir, primary, flush) => {
    const [pub, priv, object] = [join(dir, 'sealed.pub'), join(dir, 'sealed.priv'), join(dir, 'sealed.ctx')];
    await writeFile(pub, sealed.public, { mode: 0o600 });
    await writeFile(priv, sealed.private, { mode: 0o600 });
    await tpm2(options, 'tpm2_load', ['-Q', '-C', primary, '-u', pub, '-r', priv, '-c', object]).catch(() => {
      throw new KeyManagerError(
        `the master key is sealed to another TPM than ${options.tcti} (or that TPM was cleared): ` +
          'this data directory cannot be unlocked here',
        { tcti: options.tcti },
      );
    });
    await flush();
    const hex = (await tpm2(options, 'tpm2_unseal', ['-c', object])).trim();
    return Buffer.from(hex, 'hex');
  });
}
