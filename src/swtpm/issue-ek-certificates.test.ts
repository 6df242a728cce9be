import assert from 'node:assert/strict';
import { randomBytes, randomUUID, X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { IntegrityError } from '../errors.js';
import type { TpmSpec } from '../tpm-spec/tpm-spec.js';
import { toPem } from '../vault/ek-certificates.js';
import { CertificateAuthority } from './certificate-authority.js';
import { AUTHORITY_FILES } from './create-authority.js';
import { issueEkCertificates } from './issue-ek-certificates.js';
import { type EkCertificate, manufactureTpm } from './manufacture.js';
import { stateLoads } from './state-check.js';
import { stateFileName } from './state-file.js';
import { verifyAgainstAuthority } from './testing/certificate-chain.js';
import { shutDown, startTpmServer, type Swtpm } from './throwaway-swtpm.js';
import { PLATFORM_CERTIFICATE_INDEX, readEkCertificatesFrom, readNvIndex } from './tpm2-commands.js';

const SPEC: TpmSpec = { version: '2.0', model: 'tpm-tis' };
// tmpfs, as the service's scratch directory is.
const SCRATCH = '/dev/shm';

interface Manufactured {
  state: Buffer;
  stateKey: Buffer;
  ekCertificates: EkCertificate[];
}

/** What a guest reads from the TPM's NV memory: its EK certificates and its platform certificate. */
async function readFromTpm(state: Buffer, stateKey: Buffer) {
  const scratch = await mkdtemp(join(SCRATCH, 'vtpm-issue-test-'));
  const running: Swtpm[] = [];
  try {
    const stateDir = join(scratch, 'state');
    await mkdir(stateDir);
    await writeFile(join(stateDir, stateFileName(SPEC)), state);
    const tpm = await startTpmServer(SPEC, scratch, 'guest', stateDir, stateKey, running);
    try {
      return {
        ek: await readEkCertificatesFrom(tpm.send),
        platform: (await readNvIndex(tpm.send, PLATFORM_CERTIFICATE_INDEX))!,
      };
    } finally {
      tpm.close();
      await shutDown(tpm.swtpm);
    }
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

describe('certificates issued for the VM a pooled TPM is given to', () => {
  let root: string;
  let authority: CertificateAuthority;
  const passwords = { signing: randomBytes(16).toString('hex'), root: randomBytes(16).toString('hex') };
  const poolEntry = randomUUID();
  let pooled: Manufactured;

  async function manufacture(vm: string, by: CertificateAuthority): Promise<Manufactured> {
    const stateDir = join(root, `state-${vm}`);
    const stateKey = randomBytes(32);
    const ekCertificates = await manufactureTpm({
      vm,
      spec: SPEC,
      stateDir,
      stateKey,
      authority: by,
      scratchRoot: SCRATCH,
    });
    return { state: await readFile(join(stateDir, stateFileName(SPEC))), stateKey, ekCertificates };
  }

  before(async () => {
    root = await mkdtemp(join(SCRATCH, 'vtpm-issue-'));
    authority = new CertificateAuthority(join(root, 'ca'), 'Test Deployment', async () => passwords);
    pooled = await manufacture(poolEntry, authority);
  });
  after(() => rm(root, { recursive: true, force: true }));

  it("creates the CA under the deployment's name, its keys encrypted under the key manager's passwords", async () => {
    const issuer = new X509Certificate(await readFile(authority.issuerCertificatePath));
    const rootCa = new X509Certificate(await readFile(authority.rootCertificatePath));
    assert.equal(issuer.subject, 'CN=Test Deployment TPM CA');
    assert.equal(issuer.issuer, 'CN=Test Deployment root CA');
    assert.equal(rootCa.subject, 'CN=Test Deployment root CA');
    assert.ok(issuer.verify(rootCa.publicKey) && rootCa.verify(rootCa.publicKey));
    assert.ok(issuer.ca && rootCa.ca);
    for (const key of [AUTHORITY_FILES.rootKey, AUTHORITY_FILES.signingKey]) {
      const pem = await readFile(join(authority.dir, key), 'utf8');
      assert.match(pem, /^-----BEGIN ENCRYPTED PRIVATE KEY-----/, `${key} is encrypted`);
    }
    for (const file of await readdir(authority.dir)) {
      if (file.startsWith('.')) continue;
      const content = await readFile(join(authority.dir, file), 'utf8');
      for (const password of Object.values(passwords)) assert.ok(!content.includes(password), `${file} has a password`);
    }
    const [ek] = pooled.ekCertificates;
    assert.equal(new X509Certificate(ek!.der).issuer, 'CN=Test Deployment TPM CA');
    assert.equal(new X509Certificate(ek!.der).subject, `CN=${poolEntry}`, 'made in the pool, named after its entry');
  });

  it('writes EK and platform certificates naming the VM into the TPM, for the same keys', async () => {
    const vm = randomUUID();
    const issued = await issueEkCertificates({ vm, spec: SPEC, ...pooled, authority, scratchRoot: SCRATCH });
    const seen = await readFromTpm(issued.state, pooled.stateKey);
    assert.deepEqual(
      seen.ek.map((c) => c.keyType),
      pooled.ekCertificates.map((c) => c.keyType),
    );
    assert.deepEqual(seen.ek, issued.ekCertificates, 'what is returned is what the guest reads');
    for (const [i, certificate] of seen.ek.entries()) {
      const before = new X509Certificate(pooled.ekCertificates[i]!.der);
      const now = new X509Certificate(certificate.der);
      assert.equal(now.subject, `CN=${vm}`, `${certificate.keyType} names the VM`);
      assert.equal(now.subjectAltName, before.subjectAltName, 'the same TPM manufacturer, model and version');
      assert.ok(now.publicKey.equals(before.publicKey), `${certificate.keyType} certifies the same EK`);
      await verifyAgainstAuthority(toPem(certificate.der), authority.dir);
    }
    const platform = new X509Certificate(seen.platform);
    assert.equal(platform.subject, `CN=${vm}`, 'the platform certificate names the VM');
    await verifyAgainstAuthority(toPem(seen.platform), authority.dir);

    assert.ok(await stateLoads({ spec: SPEC, state: issued.state, stateKey: pooled.stateKey, scratchRoot: SCRATCH }));
    assert.ok(
      !(await stateLoads({ spec: SPEC, state: issued.state, stateKey: randomBytes(32), scratchRoot: SCRATCH })),
      'the state is still encrypted under the vTPM key',
    );
  });

  it('does not certify again a key that another CA certified', async () => {
    const other = new CertificateAuthority(join(root, 'other-ca'), 'Other', async () => passwords);
    const foreign = await manufacture(randomUUID(), other);
    await assert.rejects(
      issueEkCertificates({ vm: randomUUID(), spec: SPEC, ...foreign, authority, scratchRoot: SCRATCH }),
      IntegrityError,
    );
  });
});
