/** Every timestamp the store writes: ISO-8601 in UTC, so that text order is time order on every dialect. */
export const now = (): string => new Date().toISOString();
