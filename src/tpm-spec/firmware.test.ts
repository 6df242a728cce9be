import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError, SpecConflictError } from '../errors.js';
import { resolveFirmware } from './firmware.js';

describe('resolveFirmware', () => {
  it('defaults to BIOS without secure boot', () => {
    assert.deepEqual(resolveFirmware({}), { type: 'bios', secureBoot: false });
  });
  it('takes --firmware and --secure-boot', () => {
    assert.deepEqual(resolveFirmware({ firmware: 'uefi' }), { type: 'uefi', secureBoot: false });
    assert.deepEqual(resolveFirmware({ firmware: 'uefi', secureBoot: true }), { type: 'uefi', secureBoot: true });
  });
  it("takes Nova's image and flavor keys", () => {
    assert.deepEqual(resolveFirmware({ image: { hw_firmware_type: 'uefi', os_secure_boot: 'required' } }), {
      type: 'uefi',
      secureBoot: true,
    });
    assert.deepEqual(
      resolveFirmware({ flavor: { 'os:secure_boot': 'required' }, image: { hw_firmware_type: 'uefi' } }),
      { type: 'uefi', secureBoot: true },
    );
    assert.deepEqual(resolveFirmware({ image: { hw_firmware_type: 'uefi', os_secure_boot: 'optional' } }), {
      type: 'uefi',
      secureBoot: false,
    });
  });
  it('refuses conflicts, naming the sources', () => {
    assert.throws(
      () => resolveFirmware({ firmware: 'bios', image: { hw_firmware_type: 'uefi' } }),
      (e: unknown) =>
        e instanceof SpecConflictError && /--firmware bios vs image hw_firmware_type=uefi/.test(e.message),
    );
    assert.throws(
      () => resolveFirmware({ flavor: { 'os:secure_boot': 'required' }, image: { os_secure_boot: 'disabled' } }),
      /flavor os:secure_boot=required vs image os_secure_boot=disabled/,
    );
  });
  it('secure boot never picks the firmware by itself: without UEFI it is refused, naming both sides', () => {
    assert.throws(
      () => resolveFirmware({ firmware: 'bios', secureBoot: true }),
      (e: unknown) =>
        e instanceof SpecConflictError &&
        e.message.startsWith('secure boot (--secure-boot) needs UEFI firmware, but --firmware bios asks for BIOS'),
    );
    assert.throws(
      () => resolveFirmware({ flavor: { 'os:secure_boot': 'required' }, image: { hw_firmware_type: 'bios' } }),
      /secure boot \(flavor os:secure_boot=required\) needs UEFI firmware, but image hw_firmware_type=bios asks/,
    );
    assert.throws(
      () => resolveFirmware({ secureBoot: true }),
      /no firmware was named and the default is BIOS: add --firmware uefi or image hw_firmware_type=uefi/,
    );
  });
  it('refuses unknown values, naming the field', () => {
    assert.throws(
      () => resolveFirmware({ image: { hw_firmware_type: 'coreboot' } }),
      (e: unknown) => e instanceof InvalidArgumentError && e.message.startsWith('image.hw_firmware_type'),
    );
    assert.throws(
      () => resolveFirmware({ image: { os_secure_boot: 'yes' } }),
      /image.os_secure_boot: expected one of required, disabled, optional/,
    );
  });
});
