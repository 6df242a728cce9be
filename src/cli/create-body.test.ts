/**
 * `vtpm create` sends the create's own fields and nothing else: the API
 * refuses a field it does not have, and the command's options also hold the
 * client's (--url, --json, --data-dir). Runs the real `vtpm` against a
 * stand-in API that keeps what it is sent.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('./main.js', import.meta.url));
const bodies: unknown[] = [];
const api = createServer((request, response) => {
  const chunks: Buffer[] = [];
  request.on('data', (chunk: Buffer) => chunks.push(chunk));
  request.on('end', () => {
    bodies.push(JSON.parse(Buffer.concat(chunks).toString() || 'null'));
    response.writeHead(201, { 'content-type': 'application/json' }).end('{"vm":"x"}');
  });
});
let url: string;

before(async () => {
  await new Promise<void>((resolve) => api.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
});
after(() => api.close());

describe('vtpm create', () => {
  it("sends only the create's fields, whatever client options come with it", async () => {
    const vm = '6f1c2a0e-9b7d-4c3e-8f21-0a1b2c3d4e5f';
    const args = ['create', '--vm', vm, '--version', '2.0', '--json', '--url', url, '--data-dir', '/nonexistent'];
    const code = await new Promise<number>((resolve) =>
      execFile(process.execPath, [CLI, ...args], { env: { ...process.env, VTPM_TOKEN: 'vtpm_x' } }, (error) =>
        resolve(error ? ((error as { code?: number }).code ?? 1) : 0),
      ),
    );
    assert.equal(code, 0);
    assert.deepEqual(bodies, [{ vm, version: '2.0' }]);
  });
});
