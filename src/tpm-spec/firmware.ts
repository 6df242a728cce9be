/**
 * The VM's firmware, which decides whether there is a UEFI variable store to
 * keep beside the TPM state. Nova's names: image property hw_firmware_type
 * (bios | uefi), image property os_secure_boot and flavor extra spec
 * os:secure_boot (required | disabled | optional; optional means off here).
 */
import { InvalidArgumentError, SpecConflictError } from '../errors.js';

const FIRMWARE_TYPES = ['bios', 'uefi'] as const;
type FirmwareType = (typeof FIRMWARE_TYPES)[number];

export interface Firmware {
  type: FirmwareType;
  secureBoot: boolean;
}

export interface FirmwareRequest {
  firmware?: string | undefined;
  secureBoot?: boolean | undefined;
  flavor?: Record<string, string> | undefined;
  image?: Record<string, string> | undefined;
}

const SECURE_BOOT_VALUES = ['required', 'disabled', 'optional'];

function secureBootClaim(source: 'flavor' | 'image', key: string, value: string | undefined): boolean | undefined {
  if (value === undefined) return undefined;
  if (!SECURE_BOOT_VALUES.includes(value))
    throw new InvalidArgumentError(`${source}.${key}`, `one of ${SECURE_BOOT_VALUES.join(', ')}`, value);
  return value === 'required';
}

export function resolveFirmware(request: FirmwareRequest): Firmware {
  const fromImage = request.image?.hw_firmware_type;
  if (fromImage !== undefined && !(FIRMWARE_TYPES as readonly string[]).includes(fromImage)) {
    throw new InvalidArgumentError('image.hw_firmware_type', `one of ${FIRMWARE_TYPES.join(', ')}`, fromImage);
  }
  if (request.firmware !== undefined && !(FIRMWARE_TYPES as readonly string[]).includes(request.firmware)) {
    throw new InvalidArgumentError('firmware', `one of ${FIRMWARE_TYPES.join(', ')}`, request.firmware);
  }
  if (request.firmware !== undefined && fromImage !== undefined && request.firmware !== fromImage) {
    throw new SpecConflictError(
      `conflicting firmware: --firmware ${request.firmware} vs image hw_firmware_type=${fromImage}`,
      [
        { source: 'request', key: 'firmware', value: request.firmware },
        { source: 'image', key: 'hw_firmware_type', value: fromImage },
      ],
    );
  }
  const claims = [
    { source: 'request', key: 'secure-boot', on: request.secureBoot, value: String(request.secureBoot) },
    {
      source: 'flavor',
      key: 'os:secure_boot',
      on: secureBootClaim('flavor', 'os:secure_boot', request.flavor?.['os:secure_boot']),
      value: request.flavor?.['os:secure_boot'] ?? '',
    },
    {
      source: 'image',
      key: 'os_secure_boot',
      on: secureBootClaim('image', 'os_secure_boot', request.image?.os_secure_boot),
      value: request.image?.os_secure_boot ?? '',
    },
  ].filter((c) => c.on !== undefined);
  if (claims.some((c) => c.on !== claims[0]!.on)) {
    throw new SpecConflictError(
      `conflicting secure boot: ${claims.map((c) => `${c.source} ${c.key}=${c.value}`).join(' vs ')}`,
      claims.map(({ source, key, value }) => ({ source, key, value })),
    );
  }
  const secureBoot = claims[0]?.on ?? false;
  const type = (request.firmware ?? fromImage ?? 'bios') as FirmwareType;
  if (secureBoot && type !== 'uefi') {
    const asked = claims
      .filter((c) => c.on)
      .map((c) => (c.source === 'request' ? '--secure-boot' : `${c.source} ${c.key}=${c.value}`));
    const firmwareSource =
      request.firmware !== undefined
        ? { source: 'request', key: 'firmware', value: type, said: `--firmware ${type}` }
        : fromImage !== undefined
          ? { source: 'image', key: 'hw_firmware_type', value: type, said: `image hw_firmware_type=${type}` }
          : undefined;
    // As Nova does, secure boot does not pick the firmware by itself: BIOS is the default, and a silent switch
    // would boot the guest on other firmware than the image was made for.
    throw new SpecConflictError(
      `secure boot (${asked.join(', ')}) needs UEFI firmware, but ` +
        (firmwareSource ? `${firmwareSource.said} asks for BIOS` : 'no firmware was named and the default is BIOS') +
        ': add --firmware uefi or image hw_firmware_type=uefi',
      [
        ...claims.filter((c) => c.on).map(({ source, key, value }) => ({ source, key, value })),
        ...(firmwareSource ? [{ source: firmwareSource.source, key: firmwareSource.key, value: type }] : []),
      ],
    );
  }
  return { type, secureBoot };
}
