import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ApiClient } from './client.js';

describe('ApiClient.connect', () => {
  it('refuses to send a token over plain HTTP off this machine, naming --url', async () => {
    await assert.rejects(ApiClient.connect({ url: 'http://192.0.2.10:8443', dataDir: '/nonexistent', token: 't' }), {
      code: 'invalid_argument',
      message: /--url: .*https:\/\/HOST:PORT \(http only on loopback\)/,
    });
  });

  it('takes https anywhere and http on loopback', async () => {
    for (const url of ['https://192.0.2.10:8443', 'http://127.0.0.1:8443', 'http://[::1]:8443'])
      assert.ok(await ApiClient.connect({ url, dataDir: '/nonexistent', token: 't' }));
  });
});
