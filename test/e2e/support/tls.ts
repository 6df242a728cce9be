/** A self-signed certificate for 127.0.0.1 (GnuTLS's certtool), for servers and clients alike. */
import { execFile } from 'node:child_process';
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const exec = promisify(execFile);

export async function selfSignedCertificate(dir: string): Promise<{ cert: string; key: string }> {
  const [key, cert, template] = ['key.pem', 'cert.pem', 'template'].map((f) => join(dir, f)) as [
    string,
    string,
    string,
  ];
  await writeFile(
    template,
    'cn = "vtpm-manager test"\nip_address = "127.0.0.1"\ntls_www_server\ntls_www_client\n' +
      'signing_key\nencryption_key\nca\ncert_signing_key\nexpiration_days = 2\n',
  );
  await exec('certtool', ['--generate-privkey', '--key-type', 'ecdsa', '--outfile', key]);
  await exec('certtool', ['--generate-self-signed', '--load-privkey', key, '--template', template, '--outfile', cert]);
  await chmod(key, 0o600);
  return { cert, key };
}
