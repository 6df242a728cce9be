import { InvalidArgumentError } from '../errors.js';

const LOOPBACK = ['127.0.0.1', 'localhost', '[::1]'];

/** An agent's API carries state keys: HTTPS, or HTTP on loopback only. Returns the URL's origin. */
export function checkAgentUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new InvalidArgumentError('url', "the host agent's API as https://HOST:PORT", url);
  }
  const loopback = LOOPBACK.includes(parsed.hostname);
  if (parsed.protocol !== 'https:' && !(parsed.protocol === 'http:' && loopback)) {
    throw new InvalidArgumentError(
      'url',
      'https://HOST:PORT: vTPM keys travel to the agent (http only on loopback)',
      url,
    );
  }
  return parsed.origin;
}
