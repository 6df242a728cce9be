/** Patterns that several parts of the product check input against: one definition each. */

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether `value` is a UUID in its canonical 8-4-4-4-12 form (any case). */
export const isUuid = (value: string): boolean => UUID.test(value);

export const HOST_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$';
const HOST_NAME = new RegExp(HOST_NAME_PATTERN);
export const isHostName = (value: string): boolean => HOST_NAME.test(value);

/** The token of an `Authorization: Bearer TOKEN` header, if that is what the header holds. */
export const bearerToken = (header: string | undefined): string | undefined =>
  /^Bearer\s+(\S+)$/i.exec(header ?? '')?.[1];
