/** How the vTPM's 32-byte secret is handed to swtpm: hex on a pipe, AES-256-CBC (swtpm adds its own HMAC). */
export const STATE_CIPHER = 'aes-256-cbc';

export function stateKeyMaterial(key: Buffer): string {
  if (key.length !== 32) throw new RangeError('the state key must be 32 bytes');
  return key.toString('hex');
}

/** The --key option of `swtpm socket`, matching what swtpm_setup was given. */
export const SWTPM_KEY_OPTION = `fd=3,mode=${STATE_CIPHER},format=hex`;
