import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { libvirtTpmXml } from './libvirt.js';
import { libvirtFirmwareXml, qemuFirmwareArgs } from './ovmf.js';
import { qemuTpmArgs } from './qemu.js';

describe('qemuTpmArgs', () => {
  it('attaches the requested model to the socket', () => {
    assert.deepEqual(qemuTpmArgs({ version: '2.0', model: 'tpm-crb' }, '/run/vtpm/a.sock'), [
      '-chardev',
      'socket,id=chrtpm,path=/run/vtpm/a.sock',
      '-tpmdev',
      'emulator,id=tpm0,chardev=chrtpm',
      '-device',
      'tpm-crb,tpmdev=tpm0',
    ]);
    assert.equal(qemuTpmArgs({ version: '1.2', model: 'tpm-tis' }, '/s')[5], 'tpm-tis,tpmdev=tpm0');
  });
  it('doubles commas in the socket path, as QEMU option syntax requires', () => {
    assert.equal(
      qemuTpmArgs({ version: '2.0', model: 'tpm-tis' }, '/a,b/s.sock')[1],
      'socket,id=chrtpm,path=/a,,b/s.sock',
    );
  });
});

describe('libvirtTpmXml', () => {
  it('uses the external backend with a unix socket libvirt connects to', () => {
    const xml = libvirtTpmXml({ version: '2.0', model: 'tpm-crb' }, '/run/vtpm/a.sock');
    assert.match(xml, /^<tpm model='tpm-crb'>/);
    assert.match(xml, /<backend type='external'>/);
    assert.match(xml, /<source type='unix' mode='connect' path='\/run\/vtpm\/a.sock'\/>/);
  });
  it('escapes the path as an XML attribute', () => {
    assert.match(
      libvirtTpmXml({ version: '2.0', model: 'tpm-tis' }, "/x/'&<.sock"),
      /path='\/x\/&apos;&amp;&lt;.sock'/,
    );
  });
});

describe('UEFI firmware', () => {
  it('adds nothing for BIOS', () => {
    assert.deepEqual(qemuFirmwareArgs({ type: 'bios', secureBoot: false }, '/n.fd'), []);
    assert.equal(libvirtFirmwareXml({ type: 'bios', secureBoot: false }, '/n.fd'), null);
  });
  it('attaches the code image read-only and the VM variable store writable', () => {
    const args = qemuFirmwareArgs({ type: 'uefi', secureBoot: false }, '/data/nvram/a.fd');
    assert.deepEqual(args, [
      '-drive',
      'if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd',
      '-drive',
      'if=pflash,format=raw,unit=1,file=/data/nvram/a.fd',
    ]);
  });
  it('turns on SMM and the secure-boot code image with secure boot', () => {
    const args = qemuFirmwareArgs({ type: 'uefi', secureBoot: true }, '/n.fd');
    assert.deepEqual(args.slice(0, 4), [
      '-machine',
      'smm=on',
      '-global',
      'driver=cfi.pflash01,property=secure,value=on',
    ]);
    assert.ok(args.includes('if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd'));
    const xml = libvirtFirmwareXml({ type: 'uefi', secureBoot: true }, '/n.fd')!;
    assert.match(
      xml,
      /<loader readonly='yes' secure='yes' type='pflash'>\/usr\/share\/OVMF\/OVMF_CODE_4M.secboot.fd<\/loader>/,
    );
    assert.match(xml, /<nvram>\/n.fd<\/nvram>/);
  });
});
