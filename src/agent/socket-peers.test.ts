import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { hasConnectedPeer } from './socket-peers.js';

describe('hasConnectedPeer', () => {
  it('tells a listening socket with a client from one without', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vtpm-peers-'));
    const path = join(dir, 'vtpm.sock');
    const server = createServer(() => undefined);
    await new Promise<void>((resolve) => server.listen(path, resolve));
    try {
      assert.equal(await hasConnectedPeer(path), false);
      const client = connect(path);
      await new Promise((resolve) => client.once('connect', resolve));
      assert.equal(await hasConnectedPeer(path), true);
      client.destroy();
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(await hasConnectedPeer(path), false);
    } finally {
      server.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
