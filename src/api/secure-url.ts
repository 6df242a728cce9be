/**
 * The one check of a URL that secrets travel to (vTPM keys to a host agent,
 * raw swtpm keys to Barbican, state and keys between an agent and its
 * control plane): HTTPS, or plain HTTP to this machine's loopback only.
 */
import { InvalidArgumentError } from '../errors.js';

/** Whether a URL's hostname (as `URL` normalises it) names this machine's loopback. */
function isLoopback(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}

/**
 * Parses `url`, refusing it unless it is https://, or http:// on loopback.
 * `field` is the flag or body field the URL came from, `what` what is there
 * (for the message).
 */
export function requireSecureUrl(field: string, url: string, what: string): URL {
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    parsed = undefined;
  }
  const secure =
    parsed !== undefined &&
    (parsed.protocol === 'https:' || (parsed.protocol === 'http:' && isLoopback(parsed.hostname)));
  if (!parsed || !secure)
    throw new InvalidArgumentError(field, `${what} as https://HOST:PORT (http only on loopback)`, url);
  return parsed;
}
