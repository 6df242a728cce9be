import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { disagreements } from './libvirt-check.js';
import { InvalidArgumentError } from '../errors.js';
import { parseDomain, usesVtpmManager, withTpmElement } from './libvirt-domain.js';
import { hookAction, hookMayAct } from './libvirt-hook.js';
import { libvirtTpmXml } from './libvirt.js';

const UUID = '6f1c2a9e-3b1d-4c55-9d5e-0a6b7c8d9e10';
const RUN_DIR = '/var/lib/vtpm/run';
const OUR_SOCKET = `${RUN_DIR}/${UUID}.sock`;

/** As `virsh dumpxml` formats it. */
function domain(devices: string): string {
  return `<domain type='qemu'>
  <name>web-1</name>
  <uuid>${UUID.toUpperCase()}</uuid>
  <memory unit='KiB'>262144</memory>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
${devices}    <memballoon model='none'/>
  </devices>
</domain>
`;
}

const EMULATOR_TPM = `    <tpm model='tpm-crb'>
      <backend type='emulator' version='2.0'>
        <encryption secret='0b6c0e5e-9c1b-4f0e-8d36-1a2b3c4d5e6f'/>
      </backend>
    </tpm>
`;
const OUR_TPM = libvirtTpmXml({ version: '2.0', model: 'tpm-tis' }, OUR_SOCKET);

describe('libvirt domain XML', () => {
  it('reads the identity and an emulator TPM with its encryption secret', () => {
    assert.deepEqual(parseDomain(domain(EMULATOR_TPM)), {
      name: 'web-1',
      uuid: UUID,
      tpm: {
        model: 'tpm-crb',
        backend: 'emulator',
        version: '2.0',
        encryptionSecret: '0b6c0e5e-9c1b-4f0e-8d36-1a2b3c4d5e6f',
        socket: undefined,
      },
    });
  });

  it('reads a domain without a TPM', () => {
    assert.deepEqual(parseDomain(domain('')), { name: 'web-1', uuid: UUID });
  });

  it('refuses what is not a domain definition, naming the field', () => {
    assert.throws(
      () => parseDomain('<network><name>x</name></network>'),
      (error: unknown) => error instanceof InvalidArgumentError && /domain XML/.test(error.message),
    );
    assert.throws(() => parseDomain('<domain><name>x</name>'), InvalidArgumentError);
  });

  it('replaces the TPM element and leaves every other byte alone', () => {
    const before = domain(EMULATOR_TPM);
    const after = withTpmElement(before, OUR_TPM);
    assert.equal(after.match(/<tpm /g)?.length, 1);
    assert.equal(parseDomain(after).tpm?.socket, OUR_SOCKET);
    assert.equal(after.replace(/ *<tpm[\s\S]*<\/tpm>\n/, ''), before.replace(EMULATOR_TPM, ''));
  });

  it('adds the TPM element as the last device when there is none', () => {
    const after = withTpmElement(domain(''), OUR_TPM);
    assert.match(after, /<memballoon model='none'\/>\n {4}<tpm model='tpm-tis'>\n {6}<backend type='external'>/);
    assert.match(after, /<\/tpm>\n {2}<\/devices>/);
    assert.equal(parseDomain(after).tpm?.backend, 'external');
  });

  it('recognises only its own sockets: in the run directory, named for the domain', () => {
    assert.equal(usesVtpmManager(parseDomain(domain(`${OUR_TPM}\n`)), RUN_DIR), true);
    assert.equal(usesVtpmManager(parseDomain(domain(`${OUR_TPM}\n`)), '/other/run'), false);
    const foreign = libvirtTpmXml({ version: '2.0', model: 'tpm-tis' }, `${RUN_DIR}/someone-else.sock`);
    assert.equal(usesVtpmManager(parseDomain(domain(`${foreign}\n`)), RUN_DIR), false);
    assert.equal(usesVtpmManager(parseDomain(domain(EMULATOR_TPM)), RUN_DIR), false);
  });
});

describe('libvirt hook decisions', () => {
  const ours = parseDomain(domain(`${OUR_TPM}\n`));
  const theirs = parseDomain(domain(EMULATOR_TPM));
  const operations: Array<[string, string, string | undefined]> = [
    ['prepare', 'begin', 'start'],
    ['start', 'begin', undefined],
    ['started', 'begin', undefined],
    ['stopped', 'end', undefined],
    ['release', 'end', 'stop'],
    ['migrate', 'begin', 'prepare-migration'],
    ['restore', 'begin', undefined],
    ['reconnect', 'begin', undefined],
    ['attach', 'begin', undefined],
  ];
  for (const [operation, sub, expected] of operations) {
    it(`${operation} ${sub}: ${expected ?? 'nothing'} for a vtpm-manager domain, nothing for others`, () => {
      assert.equal(hookMayAct(operation, sub), expected !== undefined);
      assert.deepEqual(hookAction(operation, sub, ours, RUN_DIR), expected ? { kind: expected, vm: UUID } : undefined);
      assert.equal(hookAction(operation, sub, theirs, RUN_DIR), undefined);
    });
  }
});

describe('libvirt and vtpm-manager disagreeing', () => {
  const socketDir = '/var/lib/vtpm/run';
  const uses = (name: string, uuid: string) => ({
    name,
    uuid,
    tpm: { model: 'tpm-tis', backend: 'external', socket: `${socketDir}/${uuid}.sock` },
  });
  it("lists domains whose vTPM is missing and this host's vTPMs whose domain is gone", () => {
    const domains = [uses('web-1', 'u1'), uses('web-2', 'u2'), { name: 'plain', uuid: 'u3' }];
    const vtpms = [
      { vm: 'u1', host: 'a' },
      { vm: 'u4', host: 'a' },
      { vm: 'u5', host: 'b' },
    ];
    const found = disagreements(domains, vtpms, { name: 'a', socketDir });
    assert.deepEqual(
      found.missingVtpm.map((d) => d.name),
      ['web-2'],
    );
    assert.deepEqual(found.missingDomain, [{ vm: 'u4', host: 'a' }], "another host's vTPM is not this host's to judge");
  });
});
