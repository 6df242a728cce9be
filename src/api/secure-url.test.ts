import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError } from '../errors.js';
import { requireSecureUrl } from './secure-url.js';

const check = (url: string) => requireSecureUrl('--barbican-url', url, "Barbican's endpoint");

describe('requireSecureUrl', () => {
  it('accepts https anywhere and http on loopback', () => {
    for (const url of [
      'https://barbican.example:9311',
      'https://10.0.0.5:7391/prefix',
      'http://127.0.0.1:9311',
      'http://127.1.2.3:9311',
      'http://localhost:7390',
      'http://[::1]:7391',
    ])
      assert.equal(check(url).href, new URL(url).href, url);
  });

  it('refuses http off loopback, other schemes and what is no URL, naming the field', () => {
    for (const url of [
      'http://barbican.example:9311',
      'http://10.0.0.5:7391',
      'http://127.0.0.1.example:80',
      'http://[::2]:7391',
      'ftp://127.0.0.1/',
      'barbican:9311',
      'not a url',
    ])
      assert.throws(
        () => check(url),
        (error: unknown) =>
          error instanceof InvalidArgumentError &&
          error.message ===
            `--barbican-url: expected Barbican's endpoint as https://HOST:PORT (http only on loopback) ` +
              `(got ${JSON.stringify(url)})`,
        url,
      );
  });

  it('reads hosts as URL does: an IPv4 loopback written otherwise is loopback', () => {
    assert.equal(check('http://0x7f000001:9311').hostname, '127.0.0.1');
  });
});
