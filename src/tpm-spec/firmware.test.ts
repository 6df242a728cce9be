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
  it("takes Nova's image and flavor keys; secure boot implies UEFI", () => {
    assert.deepEqual(resolveFirmware({ image: { hw_firmware_type: 'uefi', os_secure_boot: 'required' } }), {
      type: 'uefi',
      secureBoot: true,
    });
    assert.deepEqual(resolveFirmware({ flavor: { 'os:secure_boot': 'required' } }), { type: 'uefi', secureBoot: true });
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
    assert.throws(() => resolveFirmware({ firmware: 'bios', secureBoot: true }), /secure boot needs UEFI/);
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
