/**
 * `vtpm agent` sends vTPM state and its token to the control plane: an
 * http:// URL off loopback is refused before the agent reads or starts
 * anything.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import pino from 'pino';
import { InvalidArgumentError } from '../../errors.js';
import { type AgentOptions, startAgent } from './agent-process.js';

const missing = join('/nonexistent', `vtpm-agent-test-${process.pid}`);
const options = (controlPlane: string): AgentOptions => ({
  name: 'host-b',
  dataDir: join(missing, 'data'),
  runDir: join(missing, 'run'),
  scratchDir: join(missing, 'scratch'),
  listen: '127.0.0.1:0',
  controlPlane,
  tokenFile: join(missing, 'agent.token'),
  logger: pino({ level: 'silent' }),
});

describe('vtpm agent --control-plane', () => {
  it('refuses http:// off loopback, naming the flag', async () => {
    await assert.rejects(
      startAgent(options('http://cp.example:7390')),
      (error: unknown) =>
        error instanceof InvalidArgumentError &&
        error.message.startsWith('--control-plane: expected ') &&
        error.message.includes('(http only on loopback) (got "http://cp.example:7390")'),
    );
  });

  it('accepts https:// and http:// on loopback (and goes on to read its token file)', async () => {
    for (const url of ['https://cp.example:7390', 'http://127.0.0.1:7390'])
      await assert.rejects(
        startAgent(options(url)),
        (error: unknown) => error instanceof InvalidArgumentError && error.message.startsWith('--token-file: '),
        url,
      );
  });
});
