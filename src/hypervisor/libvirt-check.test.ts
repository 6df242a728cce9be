/** Against a real virsh, on libvirt's test driver loaded with two domains: one uses a vtpm-manager socket. */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { domainUsing } from './libvirt-check.js';
import { Virsh } from './virsh.js';

const RUN_DIR = '/var/lib/vtpm/run';
const WEB = '11111111-2222-3333-4444-555555555555';
const DB = '11111111-2222-3333-4444-666666666666';
const dir = await mkdtemp(join(tmpdir(), 'vtpm-libvirt-check-'));
after(() => rm(dir, { recursive: true, force: true }));

const domain = (name: string, uuid: string, devices: string) =>
  `<domain type='test'><name>${name}</name><uuid>${uuid}</uuid><memory>65536</memory>` +
  `<os><type>hvm</type></os><devices>${devices}</devices></domain>`;
const node = join(dir, 'node.xml');
await writeFile(
  node,
  '<node>' +
    domain(
      'web-1',
      WEB,
      "<tpm model='tpm-tis'><backend type='external'>" +
        `<source type='unix' mode='connect' path='${RUN_DIR}/${WEB}.sock'/></backend></tpm>`,
    ) +
    domain('db-1', DB, '') +
    '</node>',
);
const virsh = new Virsh(`test://${node}`);

describe('the domain that still uses a vTPM', () => {
  it('is the domain of its UUID whose TPM is a vtpm-manager socket', async () => {
    assert.equal(await domainUsing(virsh, WEB, RUN_DIR), 'web-1');
    assert.equal(await domainUsing(virsh, WEB, '/elsewhere/run'), undefined, "another deployment's socket");
    assert.equal(await domainUsing(virsh, DB, RUN_DIR), undefined, 'a domain without a TPM');
    assert.equal(await domainUsing(virsh, '11111111-2222-3333-4444-777777777777', RUN_DIR), undefined);
  });

  it('lists every domain with its definition', async () => {
    assert.deepEqual(
      (await virsh.domains()).map((d) => [d.name, d.tpm?.backend]),
      [
        ['web-1', 'external'],
        ['db-1', undefined],
      ],
    );
  });
});
